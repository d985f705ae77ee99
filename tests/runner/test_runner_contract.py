"""The contract between the operator and the runner: the plan pinned on the Job drives the runner."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile

from daoflow_operator import jobs, planning, status
from daoflow_operator.api import models
from daoflow_operator.config import Config


def test_the_plan_pinned_on_the_job_restores_through_the_real_runner(tmp_path):
    # An artifact on a "destination volume".
    destination_dir, target_dir = tmp_path / "destination", tmp_path / "target"
    (destination_dir / "nightly").mkdir(parents=True)
    target_dir.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"restored by the runner\n"
        info = tarfile.TarInfo("app/hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    artifact = buf.getvalue()
    (destination_dir / "nightly" / "db.tar").write_bytes(artifact)

    run = {"metadata": {"name": "nightly", "uid": "u1", "resourceVersion": "1"},
           "spec": {"destinationRef": {"name": "vol"},
                    "source": {"type": "volume", "persistentVolumeClaim": {"claimName": "data"}}},
           "status": {"phase": "Succeeded", "completionTime": "2026-11-27T00:00:00Z",
                      "artifact": {"path": "nightly/db.tar", "format": "tar", "sizeBytes": len(artifact),
                                   "sha256": hashlib.sha256(artifact).hexdigest()}}}
    destination = {"metadata": {"name": "vol"}, "spec": {"persistentVolumeClaim": {"claimName": "backups"}}}
    restore = {"metadata": {"name": "r1", "namespace": "ns", "uid": "ru"},
               "spec": {"backupRunRef": {"name": "nightly"}}}
    plan = planning.plan("ns", models.BackupRestoreSpec.model_validate(restore["spec"]), run, destination).plan
    job = jobs.build_job(restore, plan.dump(), destination, Config())

    # What the pod would see: the annotation as the plan file, the mounts at their paths.
    pinned = json.loads(job["spec"]["template"]["metadata"]["annotations"][jobs.ANNOTATION_PLAN])
    pinned["source"]["mountPath"] = str(destination_dir)
    pinned["target"]["mountPath"] = str(target_dir)
    (tmp_path / "plan.json").write_text(json.dumps(pinned))
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "daoflow_operator.runner"]
    args = [a if a != jobs.PLAN_FILE else str(tmp_path / "plan.json") for a in container["args"]]
    proc = subprocess.run([sys.executable, "-m", "daoflow_operator.runner", *args,
                           "--report", str(tmp_path / "report.json")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr

    assert (target_dir / "app" / "hello.txt").read_bytes() == data
    # The operator reads the report exactly as it would from the termination message.
    result = status.parse_report((tmp_path / "report.json").read_text())
    assert result["verified"] is True and result["sha256"] == plan.artifact.sha256
