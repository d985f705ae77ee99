"""`python -m daoflow_operator`: run the operator (what the image's Deployment runs).

DAOFLOW_WATCH_NAMESPACES (comma-separated) limits it to some namespaces; by default
it watches all of them. DAOFLOW_LIVENESS_ENDPOINT (e.g. http://0.0.0.0:8080/healthz)
serves kopf's liveness probe. `--log-format json` (or DAOFLOW_LOG_FORMAT=json) writes one JSON
object per log line, with the restore's namespace, name, uid, phase and reason; the human format
is the default.
"""

from __future__ import annotations

import argparse
import os

import kopf

from . import handlers, logs  # noqa: F401 - registers the handlers


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m daoflow_operator", description="Run the daoflow operator.")
    p.add_argument("--log-format", choices=["human", "json"], default=os.environ.get("DAOFLOW_LOG_FORMAT") or "human",
                   help="human (default) or json: one JSON object per line")
    args = p.parse_args(argv)
    logs.configure(args.log_format, verbose=os.environ.get("DAOFLOW_VERBOSE") == "1")
    namespaces = [n.strip() for n in os.environ.get("DAOFLOW_WATCH_NAMESPACES", "").split(",") if n.strip()]
    kopf.run(standalone=True, clusterwide=not namespaces, namespaces=namespaces,
             liveness_endpoint=os.environ.get("DAOFLOW_LIVENESS_ENDPOINT") or None)


if __name__ == "__main__":
    main()
