#!/usr/bin/env bash
# Build the managed (v2) plugin directory: DIR/config.json + DIR/rootfs (Debian bookworm minbase
# with python3, python3-nftables (the native firewall backend's libnftables), iptables, nftables, iproute2
# and multinic in /opt/multinic), ready for
#   docker plugin create multinic:latest DIR && docker plugin enable multinic:latest
# No registry is needed: the rootfs comes from debootstrap, multinic and its dependencies from
# wheels built here. The base rootfs is cached in $MULTINIC_ROOTFS_CACHE (default .cache/ in this
# checkout: a fresh clone builds it anew, nothing outside the repo is relied on).
# To publish it: docker plugin create REGISTRY/multinic:TAG DIR && docker plugin push REGISTRY/multinic:TAG
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/build-managed-plugin.sh DIR}
cache=${MULTINIC_ROOTFS_CACHE:-$PWD/.cache/rootfs-bookworm-v3}  # bump when the package list changes
export DEBIAN_FRONTEND=noninteractive

[[ $(id -u) == 0 ]] || { echo "build-managed-plugin: run as root (debootstrap and chroot)" >&2; exit 1; }
if [[ ! -x "$cache/usr/bin/python3" ]]; then
  command -v debootstrap >/dev/null || { echo "build-managed-plugin: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  mirror=$(bash scripts/debian-mirror.sh)  # "MIRROR SECURITY"
  mirror=${mirror%% *}
  rm -rf "$cache.new"
  mkdir -p "$(dirname "$cache")"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-nftables,iptables,nftables,iproute2,conntrack \
    bookworm "$cache.new" "$mirror" >/dev/null
  rm -rf "$cache"
  mv "$cache.new" "$cache"
fi

rm -rf "$out"
mkdir -p "$out"
cp -a "$cache" "$out/rootfs"
wheels=$out/rootfs/tmp/wheels
mkdir -p "$wheels"
builder=.venv  # the checkout's own (scripts/bootstrap.sh), else a scratch one: pip wheel needs a pip
if [[ ! -x $builder/bin/pip ]]; then
  builder=$(mktemp -d)
  trap 'rm -rf "$builder"' EXIT
  python3 -m venv "$builder"
fi
"$builder/bin/pip" wheel -q --disable-pip-version-check -w "$wheels" .
chroot "$out/rootfs" python3 -m venv /opt/multinic
chroot "$out/rootfs" /opt/multinic/bin/pip install -q --disable-pip-version-check --no-index \
  --find-links /tmp/wheels multinic
rm -rf "$wheels"
ln -sf /opt/multinic/bin/multinic "$out/rootfs/usr/local/bin/multinic"
# Mount points of config.json (the host's /var/lib and /run) and the plugin socket directory.
mkdir -p "$out/rootfs/run/docker/plugins" "$out/rootfs/host/var/lib" "$out/rootfs/host/run"
cp config.json "$out/config.json"
echo "managed plugin ready in $out ($(du -sh "$out/rootfs" | cut -f1) rootfs)"
