#!/bin/sh
# The lab's own engines and daemons, unpacked under a private prefix (default /opt/multinic-lab):
#
#   engine-20.10/root   Debian bookworm's docker.io 20.10 + containerd 1.6
#   engine-28.5/root    Debian sid's docker.io 28.5 + containerd 2.1 + docker CLI 28.5 + Compose v2
#   tools/root          bookworm's runc and tini (both engines), docker-registry, radvd, iperf3
#
# Nothing here is installed as a system package, so nothing here starts a service, and the host's own
# Docker (docker-ce, docker.io, containerd, runc: whatever it runs) is never installed, replaced, removed,
# stopped or restarted. The .debs are fetched with a private apt configuration (its own source list,
# lists and cache under the prefix: the system's /var/lib/apt and /var/cache/apt are left as they are)
# and unpacked with `dpkg-deb -x`. These binaries only ever run inside the lab's namespaces (tests/lab.py).
#
# Idempotent: when the pinned versions are unpacked already it only prints them. Non-interactive.
# Env: MULTINIC_LAB_TOOLS (the prefix), MULTINIC_LAB_FORCE=1 (fetch and unpack again).
set -eu

PREFIX=${MULTINIC_LAB_TOOLS:-/opt/multinic-lab}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# Pinned: CI must not drift. bookworm = Debian 12's own packages, sid = Engine 28.5.
ENGINE20="docker.io=20.10.24+dfsg1-1+deb12u1+b6 containerd=1.6.20~ds1-1+deb12u3"
ENGINE28="docker.io=28.5.2+dfsg4-5 containerd=2.1.9+ds1-5 docker-cli=28.5.2+dfsg4-5 docker-compose=2.40.3-3"
TOOLS="runc=1.1.5+ds1-1+deb12u1 tini=0.19.0-1+b3 docker-registry=2.8.2+ds1-1 radvd=1:2.19-1+b1 \
iperf3=3.12-1+deb12u2 libiperf0=3.12-1+deb12u2 libsctp1=1.0.19+dfsg-2"
WANT="$ENGINE20 | $ENGINE28 | $TOOLS"

export DEBIAN_FRONTEND=noninteractive
exec </dev/null

say() { printf 'install-lab-tools: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (writes $PREFIX)"
for tool in apt-get dpkg-deb awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

STAMP=$PREFIX/.installed
if [ "${MULTINIC_LAB_FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    say "already unpacked in $PREFIX"
    "$PREFIX/engine-20.10/root/usr/sbin/dockerd" --version
    "$PREFIX/engine-28.5/root/usr/sbin/dockerd" --version
    exit 0
fi

mirrors=$(sh "$(dirname "$0")/debian-mirror.sh") || die "need the host's configured Debian mirror"
mirror=${mirrors%% *}
security=${mirrors#* }
[ -r "$KEYRING" ] || die "$KEYRING not found (package debian-archive-keyring)"

APTDIR=$PREFIX/.apt
rm -rf "$APTDIR"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
{
    printf 'deb [signed-by=%s] %s bookworm main\n' "$KEYRING" "$mirror"
    printf 'deb [signed-by=%s] %s bookworm-updates main\n' "$KEYRING" "$mirror"
    [ -n "$security" ] && printf 'deb [signed-by=%s] %s bookworm-security main\n' "$KEYRING" "$security"
    printf 'deb [signed-by=%s] %s sid main\n' "$KEYRING" "$mirror"
} > "$APTDIR/sources.list"
set -- -q -o "Dir::Etc::sourcelist=$APTDIR/sources.list" -o Dir::Etc::sourceparts=- \
    -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache" \
    -o APT::Sandbox::User=root -o Acquire::Retries=3

say "fetching package lists (bookworm and sid) from $mirror"
apt-get "$@" update -qq

# unpack DIR PKG=VERSION...: download into DIR/debs and unpack into DIR/root.new, then swap
unpack() {
    dir=$1; shift
    rm -rf "$dir/debs" "$dir/root.new"
    mkdir -p "$dir/debs" "$dir/root.new"
    (cd "$dir/debs" && apt-get "$@" download $PKGS) || die "could not download $PKGS (has the mirror moved on?)"
    for deb in "$dir"/debs/*.deb; do
        dpkg-deb -x "$deb" "$dir/root.new"
    done
    rm -rf "$dir/root" "$dir/debs"
    mv "$dir/root.new" "$dir/root"
}

for part in "engine-20.10:$ENGINE20" "engine-28.5:$ENGINE28" "tools:$TOOLS"; do
    name=${part%%:*}
    PKGS=${part#*:}
    say "unpacking $PKGS into $PREFIX/$name"
    unpack "$PREFIX/$name" "$@"
done

# One runc and one docker-init for both engines: bookworm's (sid's runc needs glibc 2.38).
for root in "$PREFIX/engine-20.10/root" "$PREFIX/engine-28.5/root"; do
    rm -f "$root/usr/bin/runc" "$root/usr/sbin/runc"
    for init in "$root/usr/bin/docker-init" "$root/usr/sbin/docker-init"; do
        if [ -L "$init" ] && [ ! -e "$init" ]; then rm -f "$init"; fi
    done
done
ln -sf tini-static "$PREFIX/tools/root/usr/bin/docker-init"
for f in engine-20.10/root/usr/sbin/dockerd engine-28.5/root/usr/sbin/dockerd engine-28.5/root/usr/bin/docker \
         engine-28.5/root/usr/libexec/docker/cli-plugins/docker-compose tools/root/usr/sbin/runc \
         tools/root/usr/bin/docker-registry tools/root/usr/sbin/radvd tools/root/usr/bin/iperf3; do
    [ -x "$PREFIX/$f" ] || die "$PREFIX/$f missing after unpacking"
done
rm -rf "$APTDIR"
printf '%s\n' "$WANT" > "$STAMP"
say "ready in $PREFIX"
"$PREFIX/engine-20.10/root/usr/sbin/dockerd" --version
"$PREFIX/engine-28.5/root/usr/sbin/dockerd" --version
