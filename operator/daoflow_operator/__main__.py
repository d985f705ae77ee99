"""`python -m daoflow_operator`: run the operator (what the image's Deployment runs).

DAOFLOW_WATCH_NAMESPACES (comma-separated) limits it to some namespaces; by default
it watches all of them. DAOFLOW_LIVENESS_ENDPOINT (e.g. http://0.0.0.0:8080/healthz)
serves kopf's liveness probe.
"""

from __future__ import annotations

import os

import kopf

from . import handlers  # noqa: F401 - registers the handlers


def main() -> None:
    kopf.configure(verbose=os.environ.get("DAOFLOW_VERBOSE") == "1")
    namespaces = [n.strip() for n in os.environ.get("DAOFLOW_WATCH_NAMESPACES", "").split(",") if n.strip()]
    kopf.run(standalone=True, clusterwide=not namespaces, namespaces=namespaces,
             liveness_endpoint=os.environ.get("DAOFLOW_LIVENESS_ENDPOINT") or None)


if __name__ == "__main__":
    main()
