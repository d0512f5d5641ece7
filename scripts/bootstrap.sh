#!/usr/bin/env bash
# Install what multinic's demo and tests need on a fresh Debian 12 machine (as root):
# Docker Engine 20.10 (docker.io), iptables, busybox-static for the test image, Engine 28.5
# unpacked beside it, and the package itself in .venv. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need=()
# docker-registry: the local plugin registry of the managed-plugin e2e test (run as a plain process in
# the lab); systemd: systemd-analyze verifies the host-service unit; iperf3: scripts/bench.py.
for pkg in docker.io iptables nftables busybox-static conntrack iproute2 python3-venv debootstrap docker-registry iperf3 \
    systemd; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "bootstrap: installing ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The distribution's docker.io may start a dockerd in the root namespace; the lab never uses
# it and the root namespace must stay untouched, so stop it if systemd started one.
if command -v systemctl >/dev/null && systemctl is-active -q docker 2>/dev/null; then
  systemctl stop docker.socket docker.service containerd.service 2>/dev/null || true
fi
# Likewise the registry the docker-registry package may start on the host's port 5000.
if command -v systemctl >/dev/null && systemctl is-active -q docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry 2>/dev/null || true
fi

if [[ ",${MULTINIC_ENGINES:-20.10,28.5}," == *",28.5,"* ]]; then
  bash scripts/install-engine28.sh
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "bootstrap: ready ($(.venv/bin/python --version), $(dockerd --version))"
