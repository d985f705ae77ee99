"""The operator's log lines: kopf's human format by default, or `--log-format json` (one JSON object per
line, by kopf's own JSON formatter, python-json-logger). Every line written while a restore is being
reconciled carries `"restore": {"namespace", "name", "uid", "phase", "reason"}`, from a context
variable that the reconcile sets (each reconcile runs in a thread of its own context, so they never
mix). A nested object, since `name` at the top is the logger's, by the logging module's rules."""

from __future__ import annotations

import contextvars
import functools
import logging

import kopf

FIELDS = ("namespace", "name", "uid", "phase", "reason")
CURRENT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("daoflow_restore", default=None)


def about(restore: dict, status: dict | None = None) -> dict:
    """The fields of a restore for its log lines, from its object (and its status as decided, if given)."""
    meta = restore.get("metadata") or {}
    status = status if status is not None else restore.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    cond = conditions.get("Succeeded") if status.get("completionTime") else conditions.get("Ready")
    return {"namespace": meta.get("namespace"), "name": meta.get("name"), "uid": meta.get("uid"),
            "phase": status.get("phase"), "reason": (cond or {}).get("reason")}


def bind(fields: dict) -> None:
    CURRENT.set(fields)


def own_context(fn):
    """Runs `fn` in a copy of the caller's context, so what it binds ends with it (a reconcile called
    from a caller's own thread, as tests do, leaves nothing behind)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return contextvars.copy_context().run(fn, *args, **kwargs)
    return wrapper


class RestoreFields(logging.Filter):
    """Adds the current restore's fields to each record (kopf's object reference when there is none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = CURRENT.get() or {}
        ref = getattr(record, "k8s_ref", None) or {}
        if (fields or ref) and not hasattr(record, "restore"):
            record.restore = {key: fields.get(key, ref.get(key)) for key in FIELDS}
        return True


def configure(log_format: str = "human", verbose: bool = False) -> None:
    json_lines = log_format == "json"
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if json_lines else kopf.LogFormat.FULL)
    if json_lines:
        for handler in logging.getLogger().handlers:
            handler.addFilter(RestoreFields())
