"""What the API server itself refuses, with the exact message a user reads from `kubectl apply`."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.cluster

API = "backup.daoflow.dev/v1alpha1"
# Printed under a refusal whenever a schema error kept the CEL rules from running.
RULES_NOT_CHECKED = ("<nil>: Invalid value: null: some validation rules were not checked because the object was "
                     "invalid; correct the existing errors to complete validation")


def apply(cluster, namespace: str, kind: str, name: str, spec=..., verb: str = "apply"):
    obj = {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": namespace}}
    if spec is not ...:
        obj["spec"] = spec
    return cluster.kubectl(verb, "-f", "-", input=json.dumps(obj), check=False)


def refusal(result) -> list[str]:
    """The lines of a refusal after its first one (which names the object), bullets stripped."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    return [line.removeprefix("* ") for line in lines[1:]] if len(lines) > 1 else [lines[0].split(" is invalid: ", 1)[1]]


def stored(cluster, namespace: str, plural: str) -> list[str]:
    out = cluster.kubectl("get", plural, "-n", namespace, "-o", "json").stdout
    return [item["metadata"]["name"] for item in json.loads(out)["items"]]


def test_a_destination_must_set_exactly_one_place(cluster, namespace):
    empty = apply(cluster, namespace, "BackupDestination", "empty", {})
    assert empty.stderr.strip() == ('The BackupDestination "empty" is invalid: spec: Invalid value: '
                                    "exactly one of s3 or persistentVolumeClaim must be set")
    assert refusal(apply(cluster, namespace, "BackupDestination", "missing")) == ["spec: Required value",
                                                                                  RULES_NOT_CHECKED]
    both = apply(cluster, namespace, "BackupDestination", "both",
                 {"persistentVolumeClaim": {"claimName": "backups"},
                  "s3": {"endpoint": "https://s3.local", "bucket": "backups", "credentialsSecretRef": {"name": "s"}}})
    assert refusal(both) == ["spec: Invalid value: exactly one of s3 or persistentVolumeClaim must be set"]
    assert stored(cluster, namespace, "backupdestinations") == []


def test_a_restore_target_must_set_exactly_one_place(cluster, namespace):
    message = "spec.target: Invalid value: exactly one of persistentVolumeClaim or database must be set"
    empty = apply(cluster, namespace, "BackupRestore", "empty", {"backupRunRef": {"name": "nightly"}, "target": {}})
    assert refusal(empty) == [message]
    both = apply(cluster, namespace, "BackupRestore", "both",
                 {"backupRunRef": {"name": "nightly"},
                  "target": {"persistentVolumeClaim": {"claimName": "data"}, "database": {"secretRef": {"name": "db"}}}})
    assert refusal(both) == [message]
    assert stored(cluster, namespace, "backuprestores") == []


def test_a_backup_source_must_set_exactly_the_place_of_its_type(cluster, namespace):
    message = ("spec.source: Invalid value: a volume source must set persistentVolumeClaim and not database, "
               "and a postgres source must set database and not persistentVolumeClaim")
    sources = {
        "volume-without-claim": {"type": "volume"},
        "postgres-without-database": {"type": "postgres", "persistentVolumeClaim": {"claimName": "data"}},
        "volume-and-database": {"type": "volume", "persistentVolumeClaim": {"claimName": "data"},
                                "database": {"secretRef": {"name": "db"}}},
        "postgres-and-claim": {"type": "postgres", "persistentVolumeClaim": {"claimName": "data"},
                               "database": {"secretRef": {"name": "db"}}},
    }
    for name, source in sources.items():
        result = apply(cluster, namespace, "BackupRun", name, {"destinationRef": {"name": "shared"}, "source": source})
        assert refusal(result) == [message], name
    assert stored(cluster, namespace, "backupruns") == []
    ok = apply(cluster, namespace, "BackupRun", "volume",
               {"destinationRef": {"name": "shared"}, "source": {"type": "volume",
                                                                 "persistentVolumeClaim": {"claimName": "data"}}})
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("verb", ["apply", "create"])
def test_a_malformed_restore_gets_the_schema_message_not_the_requester_policy_error(cluster, namespace, verb):
    # The requester policy patches every new restore; it must let the schema say what is wrong.
    dry_run = apply(cluster, namespace, "BackupRestore", "string-dry-run",
                    {"backupRunRef": {"name": "nightly"}, "dryRun": "yes"}, verb=verb)
    assert "error applying patch" not in dry_run.stderr
    assert refusal(dry_run) == [
        'spec.dryRun: Invalid value: "string": spec.dryRun in body must be of type boolean: "string"',
        RULES_NOT_CHECKED]
    deadline = apply(cluster, namespace, "BackupRestore", "string-deadline",
                     {"backupRunRef": {"name": "nightly"}, "dryRun": True, "activeDeadlineSeconds": "an hour"},
                     verb=verb)
    assert refusal(deadline) == [
        'spec.activeDeadlineSeconds: Invalid value: "string": spec.activeDeadlineSeconds in body must be of type '
        'integer: "string"', RULES_NOT_CHECKED]
    assert stored(cluster, namespace, "backuprestores") == []

    # A well-formed restore still has its requester recorded, with or without annotations of its own
    # (`kubectl create` sends none; `kubectl apply` sends its last-applied annotation).
    good = apply(cluster, namespace, "BackupRestore", "good", {"backupRunRef": {"name": "nightly"}, "dryRun": True},
                 verb=verb)
    assert good.returncode == 0, good.stderr
    meta = json.loads(cluster.kubectl("get", "backuprestore", "good", "-n", namespace, "-o", "json").stdout)["metadata"]
    assert meta["annotations"]["backup.daoflow.dev/requested-by"] == "admin" or cluster.local is None


SUB_PATH = ("subPath must be a relative path inside the volume: it must not start with / nor have a .. component")


@pytest.mark.parametrize("sub_path", ["../../etc", "a/../../etc", ".."])
def test_a_sub_path_that_climbs_out_is_refused(cluster, namespace, sub_path):
    restore = apply(cluster, namespace, "BackupRestore", "climb",
                    {"backupRunRef": {"name": "nightly"},
                     "target": {"persistentVolumeClaim": {"claimName": "data", "subPath": sub_path}}})
    assert refusal(restore) == [f"spec.target.persistentVolumeClaim.subPath: Invalid value: {SUB_PATH}"]
    destination = apply(cluster, namespace, "BackupDestination", "climb",
                        {"persistentVolumeClaim": {"claimName": "backups", "subPath": sub_path}})
    assert refusal(destination) == [f"spec.persistentVolumeClaim.subPath: Invalid value: {SUB_PATH}"]
    run = apply(cluster, namespace, "BackupRun", "climb",
                {"destinationRef": {"name": "d"},
                 "source": {"type": "volume", "persistentVolumeClaim": {"claimName": "data", "subPath": sub_path}}})
    assert refusal(run) == [f"spec.source.persistentVolumeClaim.subPath: Invalid value: {SUB_PATH}"]
    assert stored(cluster, namespace, "backuprestores") == []


def test_a_sub_path_that_is_absolute_or_odd_is_refused(cluster, namespace):
    restore = apply(cluster, namespace, "BackupRestore", "odd",
                    {"backupRunRef": {"name": "nightly"},
                     "target": {"persistentVolumeClaim": {"claimName": "data", "subPath": "/etc"}}})
    lines = refusal(restore)
    assert any(line.startswith("spec.target.persistentVolumeClaim.subPath: Invalid value: \"/etc\": spec.target."
                               "persistentVolumeClaim.subPath in body should match") for line in lines), lines
    ok = apply(cluster, namespace, "BackupDestination", "fine",
               {"persistentVolumeClaim": {"claimName": "backups", "subPath": "team/a..b/nightly"}})
    assert ok.returncode == 0, ok.stderr


def test_an_s3_endpoint_must_use_https_unless_plain_http_is_allowed(cluster, namespace):
    s3 = {"bucket": "backups", "credentialsSecretRef": {"name": "s"}}
    plain = apply(cluster, namespace, "BackupDestination", "plain",
                  {"s3": {"endpoint": "http://169.254.169.254/latest", **s3}})
    assert refusal(plain) == ["spec.s3.endpoint: Invalid value: "
                              "endpoint must use https:// unless allowInsecureHTTP is true"]
    off = apply(cluster, namespace, "BackupDestination", "off",
                {"s3": {"endpoint": "http://s3.local", "allowInsecureHTTP": False, **s3}})
    assert refusal(off) == refusal(plain)
    assert stored(cluster, namespace, "backupdestinations") == []
    allowed = apply(cluster, namespace, "BackupDestination", "allowed",
                    {"s3": {"endpoint": "http://s3.local", "allowInsecureHTTP": True, **s3}})
    secure = apply(cluster, namespace, "BackupDestination", "secure", {"s3": {"endpoint": "https://s3.local", **s3}})
    assert allowed.returncode == 0 and secure.returncode == 0, allowed.stderr + secure.stderr
    assert sorted(stored(cluster, namespace, "backupdestinations")) == ["allowed", "secure"]
