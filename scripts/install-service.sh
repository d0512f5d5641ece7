#!/usr/bin/env bash
# multinic as a host service (the legacy plugin dockerd finds by its socket), from this checkout.
#
#   sudo scripts/install-service.sh                    # install, or upgrade: venv in /opt/multinic, the
#                                                      # `multinic` command in /usr/local/bin, the systemd
#                                                      # unit enabled and (re)started
#   sudo scripts/install-service.sh --remove           # stop and disable the service, remove unit, venv and
#                                                      # command; the state and multinic's kernel objects stay
#   sudo scripts/install-service.sh --remove --purge   # first remove every network's kernel objects and the
#                                                      # policy routing in containers (`multinic cleanup`), and
#                                                      # after: the state directory and multinic's networkd and
#                                                      # NetworkManager drop-ins (--purge alone means the same)
#
# Remove the multinic containers and networks first (`docker rm -f`, `docker network rm`): Docker keeps
# networks whose driver is gone, and cannot start their containers.
# MULTINIC_PREFIX (/opt/multinic), SYSTEMD_UNIT_DIR (/etc/systemd/system), BIN_DIR (/usr/local/bin) and
# DROPIN_ROOT (/) move what is installed and removed (the tests use scratch directories); systemd is only
# driven for the real unit directory.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${MULTINIC_PREFIX:-/opt/multinic}
unit_dir=${SYSTEMD_UNIT_DIR:-/etc/systemd/system}
bin_dir=${BIN_DIR:-/usr/local/bin}
state_dir=${MULTINIC_STATE_DIR:-/var/lib/multinic}
unit=$unit_dir/multinic.service
remove=0 purge=0
for arg in "$@"; do
  case $arg in
    --remove) remove=1 ;;
    --purge) remove=1 purge=1 ;;
    *) echo "usage: $0 [--remove [--purge]]" >&2; exit 2 ;;
  esac
done

systemd() { [[ -d /run/systemd/system && $unit_dir == /etc/systemd/system ]] && command -v systemctl >/dev/null; }
say() { printf 'install-service: %s\n' "$*"; }
die() { say "error: $*" >&2; exit 1; }

# The venv in $prefix with this checkout installed. What it needs from the host is checked first and
# named (nothing is installed with apt here): python3-venv, and a C compiler for python-iptables'
# small C library (gcc, libc6-dev). pip fetches the Python dependencies from its index (PyPI).
install_venv() {
  if [[ ! -x $prefix/bin/python ]]; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || die "python3-venv is missing: apt-get install python3-venv"
    python3 -m venv "$prefix"
  fi
  if ! "$prefix/bin/python" -c 'import iptc' 2>/dev/null; then
    printf '#include <stdio.h>\nint main(void){return 0;}\n' | gcc -x c -o /dev/null - 2>/dev/null \
      || die "python-iptables builds a small C library: apt-get install gcc libc6-dev"
  fi
  "$prefix/bin/pip" install -q --disable-pip-version-check --upgrade .
}

if ((!remove)); then
  upgrade=0
  [[ -x $prefix/bin/multinic ]] && upgrade=1
  install_venv
  mkdir -p "$unit_dir" "$bin_dir"
  sed "s|/opt/multinic/bin/multinic|$prefix/bin/multinic|" contrib/systemd/multinic.service > "$unit.tmp"
  chmod 0644 "$unit.tmp"
  mv "$unit.tmp" "$unit"
  ln -sfn "$prefix/bin/multinic" "$bin_dir/multinic"
  version=$("$prefix/bin/multinic" --version)
  # Not fatal: beside Docker's iptables the iptables backends serve; on Engine 29's nftables firewall or
  # a host without iptables nothing else can (`multinic doctor` says so too).
  if why=$("$prefix/bin/python" -c 'from plugin.kernel.firewall import nft; print(nft.available() or "")') \
      && [[ -n $why ]]; then
    say "warning: $why (without it multinic uses iptables-nft, or nothing where Docker's firewall is nftables)"
  fi
  if systemd; then
    systemctl daemon-reload
    systemctl enable multinic.service >/dev/null
    # Restarting the plugin leaves containers and their kernel objects in place: the new version
    # re-reads the state and reconciles before it listens.
    systemctl restart multinic.service
    say "$version $([[ $upgrade == 1 ]] && echo upgraded || echo installed); multinic.service (re)started (journalctl -u multinic)"
  else
    say "$version $([[ $upgrade == 1 ]] && echo upgraded || echo installed) in $prefix, unit $unit (no running systemd for it here: not started)"
  fi
  exit 0
fi

if systemd && [[ -f $unit ]]; then
  systemctl disable --now multinic.service || true
fi
if ((purge)); then
  if [[ ! -x $prefix/bin/multinic ]]; then  # removed earlier without --purge: the cleanup needs the command
    say "installing multinic into $prefix again, for its cleanup only (removed after)"
    install_venv
  fi
  MULTINIC_STATE_DIR=$state_dir "$prefix/bin/multinic" cleanup
  rm -rf "$state_dir"
  for dropin in /etc/systemd/networkd.conf.d/multinic.conf /etc/NetworkManager/conf.d/multinic.conf; do
    [[ -f ${DROPIN_ROOT:-}$dropin ]] && rm -f "${DROPIN_ROOT:-}$dropin" && say "removed $dropin (reload networkd / NetworkManager)"
  done
fi
rm -f "$unit"
[[ -L $bin_dir/multinic ]] && rm -f "$bin_dir/multinic"
if systemd; then systemctl daemon-reload; fi
rm -rf "$prefix"
if ((purge)); then
  say "removed the service, $prefix, multinic's kernel objects and its state ($state_dir)"
else
  say "removed the service and $prefix (state in $state_dir and the networks' kernel objects kept; --purge removes them)"
fi
