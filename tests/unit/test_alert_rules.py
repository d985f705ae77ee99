"""The chart's PrometheusRule: rendered by the pinned helm, checked with `promtool check rules` and
unit-tested with `promtool test rules` (both from the pinned Prometheus module), and its ServiceMonitor."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from daoflow_operator.localcluster import build
from test_chart import helm, render  # noqa: F401 - helm is a fixture

ENABLED = ("metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
           "metrics.prometheusRule.runningThresholdSeconds=3600")

# Series are sampled every minute; `eval_time` is when the alerts are looked at.
TESTS = {
    "rule_files": ["rules.yaml"],
    "evaluation_interval": "1m",
    "tests": [
        {   # One failed restore in shop: the alert names the namespace and the reason.
            "interval": "1m",
            "input_series": [
                {"series": 'daoflow_restores_total{namespace="shop",outcome="failed",reason="ChecksumMismatch"}',
                 "values": "0 0 1 1 1"},
                {"series": 'daoflow_restores_total{namespace="shop",outcome="succeeded",reason="RestoreSucceeded"}',
                 "values": "0 1 2 3 4"},
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "DaoflowRestoreFailed", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "namespace": "shop", "reason": "ChecksumMismatch"},
                     "exp_annotations": {
                         "summary": "A restore failed in namespace shop (ChecksumMismatch)",
                         "description": "At least one BackupRestore ended Failed with reason ChecksumMismatch in the "
                                        "last 15 minutes. kubectl get backuprestores -n shop shows which."}}]},
                {"eval_time": "1m", "alertname": "DaoflowRestoreFailed", "exp_alerts": []},
            ],
        },
        {   # Successes alone alert nothing.
            "interval": "1m",
            "input_series": [
                {"series": 'daoflow_restores_total{namespace="shop",outcome="succeeded",reason="RestoreSucceeded"}',
                 "values": "0 1 2 3 4"},
            ],
            "alert_rule_test": [{"eval_time": "4m", "alertname": "DaoflowRestoreFailed", "exp_alerts": []}],
        },
        {   # A stall fires after a minute, and clears with the gauge.
            "interval": "1m",
            "input_series": [{"series": "daoflow_restores_stalled", "values": "0 1 1 1 0"}],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "DaoflowRestoreStalled", "exp_alerts": []},
                {"eval_time": "3m", "alertname": "DaoflowRestoreStalled",
                 "exp_alerts": [{"exp_labels": {"severity": "warning"}, "exp_annotations": {
                     "summary": "A running restore makes no progress",
                     "description": "1 running restore(s) are marked Progressing=False/Stalled: their runner reported "
                                    "no progress for the operator's stall timeout. They fail only at their deadline."}}]},
                {"eval_time": "4m", "alertname": "DaoflowRestoreStalled", "exp_alerts": []},
            ],
        },
        {   # A restore whose Job was created at t=0 runs past the 3600 s threshold; none in progress (NaN) never fires.
            "interval": "10m",
            "input_series": [
                {"series": "daoflow_restore_oldest_start_timestamp_seconds", "values": "0x12"},
            ],
            "alert_rule_test": [
                {"eval_time": "50m", "alertname": "DaoflowRestoreRunningTooLong", "exp_alerts": []},
                {"eval_time": "70m", "alertname": "DaoflowRestoreRunningTooLong",
                 "exp_alerts": [{"exp_labels": {"severity": "warning"}, "exp_annotations": {
                     "summary": "A restore has been in progress for more than 3600 s",
                     "description": "The oldest restore in progress had its Job created 1h 10m 0s ago."}}]},
            ],
        },
        {
            "interval": "10m",
            "input_series": [{"series": "daoflow_restore_oldest_start_timestamp_seconds", "values": " ".join(["NaN"] * 13)}],
            "alert_rule_test": [{"eval_time": "110m", "alertname": "DaoflowRestoreRunningTooLong", "exp_alerts": []}],
        },
    ],
}


@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        return str(build.promtool_path(log=lambda msg: None))
    except build.BuildError as exc:
        pytest.skip(f"promtool could not be built from its Go module: {exc}")


def test_the_metrics_objects_are_off_by_default(helm):  # noqa: F811
    kinds = {d["kind"] for d in render(helm)}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


def test_the_service_monitor_scrapes_the_operators_metrics_port(helm):  # noqa: F811
    docs = render(helm, *ENABLED)
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "daoflow-operator-metrics")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 8081} in container["ports"]
    assert {"name": "DAOFLOW_METRICS_PORT", "value": "8081"} in container["env"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics"}]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_the_alert_rules_pass_promtool_check_and_unit_tests(helm, promtool, tmp_path):  # noqa: F811
    rule = next(d for d in render(helm, *ENABLED) if d["kind"] == "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(TESTS))
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    print(f"\n{check.stdout.strip()}\n{tested.stdout.strip()}")
