#!/usr/bin/env bash
# What multinic's demo and tests need, on a Debian 12 machine (as root), without touching the host's
# Docker: safe on a host that runs production containers.
#
# - Installs only packages that start no service: iptables, nftables (and its Python binding),
#   busybox-static (the test image), conntrack, iproute2, python3-venv, gcc and libc6-dev (python-iptables
#   builds a small C library), debootstrap (the managed plugin's rootfs), the libraries the lab's dockerd
#   links against, and systemd's tools where systemd-analyze is missing (a container, not a host). It first asks apt what it
#   would do, and refuses if that would install, upgrade or remove anything of Docker, containerd or
#   runc, or remove any package at all.
# - Unpacks the lab's own engines (Docker 20.10 and 28.5) and daemons (containerd, runc,
#   docker-registry, radvd, iperf3) under /opt/multinic-lab (scripts/install-lab-tools.sh): they run only
#   inside the lab's namespaces. The host's docker, containerd and runc, their services and their
#   sockets are never started, stopped, installed, replaced or removed.
# - Installs the package itself into .venv in this checkout.
# Idempotent; non-interactive.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
say() { printf 'bootstrap: %s\n' "$*" >&2; }
refuse() { say "refusing: $*"; exit 3; }

[[ $(id -u) == 0 ]] || refuse "run as root: the lab builds network namespaces and unpacks into /opt/multinic-lab"

pkgs=(iptables nftables python3-nftables busybox-static conntrack iproute2 python3-venv gcc libc6-dev debootstrap
      libdevmapper1.02.1 libseccomp2 libsystemd0)
command -v systemd-analyze >/dev/null || pkgs+=(systemd)  # verifies the host-service unit in the tests
need=()
for pkg in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  say "installing ${need[*]}"
  apt-get update -qq
  plan=$(apt-get install -s -qq --no-install-recommends "${need[@]}" 2>&1) || refuse "apt cannot install ${need[*]}:
$plan"
  removes=$(grep -E '^Remv ' <<<"$plan" || true)
  engine=$(grep -E '^(Inst|Remv) (docker|containerd|runc|moby)' <<<"$plan" || true)
  if [[ -n $removes || -n $engine ]]; then
    refuse "installing ${need[*]} would change the host's packages:
${removes}${removes:+$'\n'}${engine}
multinic's scripts never install, replace or remove Docker, containerd or runc, nor remove any package.
Install the packages above yourself if that is what you want, then run this again."
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

bash scripts/install-lab-tools.sh

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
say "ready ($(.venv/bin/python --version); lab engines in ${MULTINIC_LAB_TOOLS:-/opt/multinic-lab})"
