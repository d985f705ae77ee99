"""`--log-format json`: one JSON object per line, each naming the restore being reconciled."""

import io
import json
import logging
import threading

import kopf

from daoflow_operator import logs


def json_logger(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(kopf._core.actions.loggers.make_formatter(log_format=kopf.LogFormat.JSON))
    handler.addFilter(logs.RestoreFields())
    logger = logging.getLogger("daoflow_operator.test-json")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


RESTORE = {"metadata": {"namespace": "shop", "name": "r1", "uid": "u-1"},
           "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False", "reason": "Running"}]}}


def test_each_line_is_one_json_object_with_the_restores_fields():
    out = io.StringIO()
    log = json_logger(out)

    def reconcile():  # as a reconcile does, in a thread of its own
        logs.bind(logs.about(RESTORE))
        log.info("shop/r1: Queued -> Running (Running: fetching\nand more)")
        final = {"phase": "Succeeded", "completionTime": "2026-11-27T12:00:00Z",
                 "conditions": [{"type": "Succeeded", "status": "True", "reason": "RestoreSucceeded"}]}
        logs.bind(logs.about(RESTORE, final))
        log.info("done")

    thread = threading.Thread(target=reconcile)
    thread.start()
    thread.join()
    log.info("operator started")  # about no restore
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["restore"] == {"namespace": "shop", "name": "r1", "uid": "u-1", "phase": "Running",
                                "reason": "Running"}
    assert first["message"].endswith("fetching\nand more)")
    assert (second["restore"]["phase"], second["restore"]["reason"]) == ("Succeeded", "RestoreSucceeded")
    assert third["message"] == "operator started" and "restore" not in third  # the thread's context stayed there


def test_kopfs_object_reference_fills_in_outside_a_reconcile():
    out = io.StringIO()
    json_logger(out).info("an event", extra={"k8s_ref": {"namespace": "shop", "name": "r2", "uid": "u-2"}})
    line = json.loads(out.getvalue())
    assert line["restore"] == {"namespace": "shop", "name": "r2", "uid": "u-2", "phase": None, "reason": None}


def test_a_reconcile_called_in_the_callers_own_thread_leaves_no_restore_behind():
    @logs.own_context
    def reconcile():
        logs.bind(logs.about(RESTORE))
        return logs.CURRENT.get()["name"]

    assert reconcile() == "r1" and logs.CURRENT.get() is None
