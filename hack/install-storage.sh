#!/usr/bin/env bash
# Installs the real storage the runner tests use, from Debian's packages: PostgreSQL (server
# and client, which also creates the `postgres` user the tests start it as), zstd (for the
# benchmark's baseline) and bsdtar (libarchive-tools, for the differential tar corpus). Safe to
# run again: it installs only what is missing.
# The S3 server (Versity's S3 gateway) is built from its Go module by the tests themselves;
# boto3, the tests' upload client, comes with the Python test extra.
set -euo pipefail

need=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v pg_restore >/dev/null || need+=(postgresql-client)
command -v zstd >/dev/null || need+=(zstd)
command -v runuser >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)  # the local control plane's certificates
command -v bsdtar >/dev/null || need+=(libarchive-tools)  # the differential tar corpus; brings libarchive13 (libarchive-c)

if ((${#need[@]} == 0)); then
  echo "install-storage: openssl, PostgreSQL, zstd and bsdtar are already installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
echo "install-storage: installing ${need[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
