#!/bin/sh
# Install Docker Engine 28.5 (Debian sid's docker.io + containerd) unpacked under /opt/engine-28/root,
# next to bookworm's system docker.io 20.10, for the multinic e2e lab (tests/lab.py, engine "28.5").
#
# - No system package is installed, removed or changed: the .debs are fetched with a private apt
#   configuration (own source list, lists and cache directories) and unpacked with dpkg-deb -x.
# - sid's runc needs glibc 2.38 and is not used: any runc in the tree is removed so bookworm's
#   /usr/sbin/runc (1.1.5) is found on PATH.
# - Idempotent: when the pinned versions are already unpacked it only prints the dockerd version.
# - Non-interactive (no prompts, no stdin).
#
# Use:  PATH=/opt/engine-28/root/usr/bin:/opt/engine-28/root/usr/sbin:$PATH dockerd ...
# Env:  ENGINE28_PREFIX (default /opt/engine-28), ENGINE28_DOCKER_VERSION, ENGINE28_CONTAINERD_VERSION,
#       ENGINE28_FORCE=1 to re-download and unpack.
set -eu

PREFIX=${ENGINE28_PREFIX:-/opt/engine-28}
DOCKER_VERSION=${ENGINE28_DOCKER_VERSION:-28.5.2+dfsg4-5}
CONTAINERD_VERSION=${ENGINE28_CONTAINERD_VERSION:-2.1.9+ds1-5}
# Compose v2 (a Go CLI plugin, also runs standalone): for the compose `driver_opts` tests.
COMPOSE_VERSION=${ENGINE28_COMPOSE_VERSION:-2.40.3-3}
SOURCES=/etc/apt/sources.list.d/debian.sources
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

export DEBIAN_FRONTEND=noninteractive
exec </dev/null

say() { printf 'install-engine28: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (writes $PREFIX)"
for tool in apt-get dpkg-deb awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

ROOT=$PREFIX/root
STAMP=$PREFIX/.installed
WANT="docker.io=$DOCKER_VERSION containerd=$CONTAINERD_VERSION docker-compose=$COMPOSE_VERSION"

engine_env() {
    PATH=$ROOT/usr/bin:$ROOT/usr/sbin:$PATH
    export PATH
}

report() {
    engine_env
    say "dockerd: $(command -v dockerd)  containerd: $(command -v containerd)  runc: $(command -v runc)"
    dockerd --version
}

if [ "${ENGINE28_FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
        && [ -x "$ROOT/usr/sbin/dockerd" ] && [ -x "$ROOT/usr/bin/containerd" ] \
        && [ -x "$ROOT/usr/libexec/docker/cli-plugins/docker-compose" ]; then
    say "already installed: $WANT in $ROOT"
    report
    exit 0
fi

[ -r "$SOURCES" ] || die "$SOURCES not found (need the configured Debian mirror)"
mirror=$(awk '/^URIs:/{print $2; exit}' "$SOURCES")
[ -n "$mirror" ] || die "no URIs: line in $SOURCES"
[ -r "$KEYRING" ] || die "$KEYRING not found (package debian-archive-keyring)"

# Private apt state: sid source list, lists and cache live under $PREFIX/.apt, so the system's
# /var/lib/apt/lists and /var/cache/apt (pkgcache.bin) are left exactly as they are.
APTDIR=$PREFIX/.apt
rm -rf "$APTDIR"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/debs"
printf 'deb [signed-by=%s] %s sid main\n' "$KEYRING" "$mirror" > "$APTDIR/sid.list"
set -- -q -o "Dir::Etc::sourcelist=$APTDIR/sid.list" -o Dir::Etc::sourceparts=- \
    -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache" \
    -o APT::Sandbox::User=root -o Acquire::Retries=3

say "fetching sid package lists from $mirror"
apt-get "$@" update -qq
say "downloading $WANT"
(cd "$APTDIR/debs" && apt-get "$@" download "docker.io=$DOCKER_VERSION" "containerd=$CONTAINERD_VERSION" \
    "docker-compose=$COMPOSE_VERSION") \
    || die "could not download $WANT from sid (has the mirror moved on? available:
$(apt-cache "$@" policy docker.io containerd 2>/dev/null | grep -E '^[a-z]|Candidate')
set ENGINE28_DOCKER_VERSION / ENGINE28_CONTAINERD_VERSION to pin other versions)"

# Unpack into a fresh tree next to the old one, then swap (a failed run leaves the old tree usable).
rm -rf "$ROOT.new"
mkdir -p "$ROOT.new"
for deb in "$APTDIR"/debs/*.deb; do
    dpkg-deb -x "$deb" "$ROOT.new"
done
rm -f "$ROOT.new/usr/bin/runc" "$ROOT.new/usr/sbin/runc"   # keep bookworm's runc (glibc 2.36) on PATH
# docker.io ships docker-init -> tini-static (a separate package we do not unpack): drop the dangling
# link so bookworm's /usr/bin/docker-init is found instead.
if [ -L "$ROOT.new/usr/bin/docker-init" ] && [ ! -e "$ROOT.new/usr/bin/docker-init" ]; then
    rm -f "$ROOT.new/usr/bin/docker-init"
fi
[ -x "$ROOT.new/usr/sbin/dockerd" ] || die "dockerd missing after unpacking"
[ -x "$ROOT.new/usr/bin/containerd" ] || die "containerd missing after unpacking"
[ -x "$ROOT.new/usr/libexec/docker/cli-plugins/docker-compose" ] || die "docker-compose missing after unpacking"
rm -rf "$ROOT"
mv "$ROOT.new" "$ROOT"
rm -rf "$APTDIR"
printf '%s\n' "$WANT" > "$STAMP"
say "installed $WANT in $ROOT"
report
