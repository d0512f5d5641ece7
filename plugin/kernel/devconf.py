"""Sysctls the plugin sets (``net.ipv4.conf.<parent>.rp_filter``; IPv6 forwarding and ``accept_ra``),
read and written in the current network namespace. Per-interface IPv4 settings go over netlink, because a
managed plugin sees /proc/sys read-only (IPv6 ones, which have no netlink setter, through a procfs of its
own): ``RTM_SETLINK`` with ``IFLA_AF_SPEC`` → ``AF_INET`` → ``IFLA_INET_CONF`` → one u32 per
setting (``IPV4_DEVCONF_*``, include/uapi/linux/ip.h); ``RTM_GETLINK`` returns them as an array of u32."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
import struct
import tempfile
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from . import netlink as nl

IFLA_IFNAME, IFLA_AF_SPEC, IFLA_INET_CONF = 3, 26, 1
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
DEVCONF = {"forwarding": 1, "proxy_arp": 3, "accept_redirects": 4, "rp_filter": 8, "promote_secondaries": 21,
           "route_localnet": 27}
_PER_INTERFACE = re.compile(r"net/ipv4/conf/([^/]+)/([a-z_]+)")


def _by_netlink(path: str) -> tuple[str, str] | None:
    """``net/ipv4/conf/<if>/<name>`` of a real interface → (if, name); None otherwise."""
    match = _PER_INTERFACE.fullmatch(path)
    if match and match.group(1) not in ("all", "default") and match.group(2) in DEVCONF:
        return match.group(1), match.group(2)
    return None


def _read_devconf(ifname: str, name: str) -> int | None:
    index = DEVCONF[name]
    try:
        replies = nl.request(nl.RTM_GETLINK, 0, nl.ifinfo() + nl.nla_str(IFLA_IFNAME, ifname))
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    for _kind, body in replies:
        inet = nl.attrs(nl.attrs(body, nl.IFINFOMSG.size).get(IFLA_AF_SPEC) or b"").get(socket.AF_INET)
        conf = nl.attrs(inet or b"").get(IFLA_INET_CONF)
        if conf is not None and len(conf) >= index * 4:
            return struct.unpack_from("=I", conf, (index - 1) * 4)[0]
    return None


def _write_devconf(ifname: str, name: str, value: int) -> None:
    conf = nl.nla_u32(DEVCONF[name], value)
    spec = nl.nla(IFLA_AF_SPEC, nl.nla(socket.AF_INET, nl.nla(IFLA_INET_CONF, conf, nested=True), nested=True),
                  nested=True)
    nl.ack(nl.RTM_SETLINK, 0, nl.ifinfo() + nl.nla_str(IFLA_IFNAME, ifname) + spec)


def read_sysctl(path: str) -> str | None:
    """``path`` like ``net/ipv4/conf/eth1/rp_filter``; None if it does not exist."""
    key = _by_netlink(path)
    if key is not None:
        value = _read_devconf(*key)
        return None if value is None else str(value)
    try:
        return Path("/proc/sys", path).read_text().strip()
    except FileNotFoundError:
        return None


def write_sysctl(path: str, value: str) -> None:
    """Only when it differs; a missing interface or setting is left alone."""
    key = _by_netlink(path)
    if key is not None:
        current = _read_devconf(*key)
        if current is not None and current != int(value):
            _write_devconf(*key, int(value))
        return
    target = Path("/proc/sys", path)
    if not target.exists() or target.read_text().strip() == value:
        return
    try:
        target.write_text(value)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        # A managed plugin sees /proc/sys read-only (the runtime's bind mount), and IPv6 settings have no
        # netlink setter: a procfs of its own, in its own mount namespace, is writable; a network sysctl
        # written there applies to the writer's network namespace (dockerd's).
        (_own_procfs() / "sys" / path).write_text(value)


def _own_procfs() -> Path:
    """A procfs mounted by this plugin in its own mount namespace (once: every process of the plugin
    shares that namespace); needs CAP_SYS_ADMIN, which the managed plugin has."""
    target = Path(tempfile.gettempdir(), "multinic-procfs")
    if (target / "sys" / "net").is_dir():
        return target
    target.mkdir(mode=0o700, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"proc", str(target).encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"/proc/sys is read-only here and mounting a procfs of our own failed: "
                            f"{os.strerror(code)}", str(target))
    return target
