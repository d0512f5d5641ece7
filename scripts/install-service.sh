#!/usr/bin/env bash
# Install or remove multinic as a host service (the legacy plugin dockerd finds by its socket).
#
#   sudo scripts/install-service.sh            # install: /opt/multinic venv + systemd unit, enabled and started
#   sudo scripts/install-service.sh --remove   # stop, disable, remove unit and venv (state kept)
#   sudo scripts/install-service.sh --purge    # same, and first remove everything multinic added to the
#                                              # kernel (`multinic cleanup`) and its state directory
#
# MULTINIC_PREFIX (default /opt/multinic) and SYSTEMD_UNIT_DIR (default /etc/systemd/system) move the
# venv and the unit (the tests install into a scratch directory). Without a running systemd the unit is
# installed but not started; the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${MULTINIC_PREFIX:-/opt/multinic}
unit_dir=${SYSTEMD_UNIT_DIR:-/etc/systemd/system}
unit=$unit_dir/multinic.service
mode=${1:-install}

have_systemd() { [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; }
say() { printf 'install-service: %s\n' "$*"; }

case $mode in
  install)
    python3 -m venv "$prefix"
    "$prefix/bin/pip" install -q --disable-pip-version-check --upgrade .
    mkdir -p "$unit_dir"
    sed "s|/opt/multinic/bin/multinic|$prefix/bin/multinic|" contrib/systemd/multinic.service > "$unit.tmp"
    mv "$unit.tmp" "$unit"
    chmod 0644 "$unit"
    if have_systemd && [[ $unit_dir == /etc/systemd/system ]]; then
      systemctl daemon-reload
      systemctl enable --now multinic.service
      say "multinic.service enabled and started (journalctl -u multinic)"
    else
      say "installed $unit and $prefix (no running systemd here: not started)"
    fi
    ;;
  --remove|--purge)
    if have_systemd && [[ $unit_dir == /etc/systemd/system ]] && [[ -f $unit ]]; then
      systemctl disable --now multinic.service || true
    fi
    if [[ $mode == --purge && -x $prefix/bin/multinic ]]; then
      "$prefix/bin/multinic" cleanup
      rm -rf "${MULTINIC_STATE_DIR:-/var/lib/multinic}"
    fi
    rm -f "$unit"
    have_systemd && [[ $unit_dir == /etc/systemd/system ]] && systemctl daemon-reload
    rm -rf "$prefix"
    if [[ $mode == --purge ]]; then
      say "removed $unit, $prefix, multinic's kernel objects and its state"
    else
      say "removed $unit and $prefix (state in ${MULTINIC_STATE_DIR:-/var/lib/multinic} kept; --purge removes it)"
    fi
    ;;
  *)
    echo "usage: $0 [--remove|--purge]" >&2
    exit 2
    ;;
esac
