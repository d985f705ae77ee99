# One image for the operator and the restore runner (`python -m daoflow_operator.runner`).
# Runs as a non-root user; exec-form commands, so nothing needs a shell at run time.
# BASE_IMAGE: the public image by default; the local node build passes an image made from Debian's
# packages (operator/daoflow_operator/localcluster/images.py, docs/images.md).
ARG BASE_IMAGE=python:3.11-slim-trixie

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -m compileall -q /opt/venv

FROM ${BASE_IMAGE}
# pg_restore and psql for PostgreSQL targets. Debian trixie ships PostgreSQL 17's client, which
# also reads dumps made by older pg_dump versions.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 daoflow \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin daoflow
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so that the kubelet can check runAsNonRoot without reading /etc/passwd; the same
# uid as the restore Job's pod (jobs.RUNNER_UID).
USER 65532:65532
# The operator by default; the restore Job sets command: ["python", "-m", "daoflow_operator.runner"].
CMD ["python", "-m", "daoflow_operator"]
