#!/usr/bin/env bash
# Installs what the local control plane's real node needs, from Debian's packages: runc, the CNI
# plugins, iproute2 (the node's bridge), and the image tools (debootstrap and buildah build the
# project's image over a Debian base; gcc and libc6-dev build Kubernetes' pause program; busybox-static
# makes a small test image). Safe to run again: it installs only what is missing. Without root (and
# no passwordless sudo) it says so and stops; the launcher then runs the simulated node only.
set -euo pipefail

need=()
command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
[ -x /usr/sbin/ip ] || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v buildah >/dev/null || need+=(buildah)
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || compgen -G "/usr/lib/*/libc.a" >/dev/null || need+=(libc6-dev)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)

if ((${#need[@]} == 0)); then
  echo "install-node: runc, CNI plugins, iproute2, debootstrap, buildah, gcc and busybox are already installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! sudo -n true 2>/dev/null; then
    echo "install-node: ${need[*]} missing and no root: the real node will not run (restores are simulated)"
    exit 0
  fi
  sudo=(sudo -n)
fi
echo "install-node: installing ${need[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
