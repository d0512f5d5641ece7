"""IPv4 per-interface settings (``net.ipv4.conf.<if>.*``) read and written over netlink.

A managed (v2) plugin sees ``/proc/sys`` read-only (EROFS, measured on 20.10 and 28.5), so the
sysctl files cannot be written there. The kernel also takes IPv4 devconf in ``RTM_SETLINK``:
``IFLA_AF_SPEC`` → ``AF_INET`` → ``IFLA_INET_CONF`` → one u32 attribute per setting, numbered as
``IPV4_DEVCONF_*`` in ``include/uapi/linux/ip.h`` (``inet_set_link_af``). ``RTM_GETLINK`` returns
the same block as an array of u32 (index ``n - 1`` holds setting ``n``). Only CAP_NET_ADMIN in the
link's network namespace is needed, exactly as for ``ip link set``.

pyroute2 0.9 decodes that block as a flat struct and cannot encode it as the kernel wants, so the
two messages are built here with :mod:`struct` on a plain ``AF_NETLINK`` socket. Works in whatever
network namespace the process is in.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_GETLINK = 18
RTM_SETLINK = 19
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
IFLA_IFNAME = 3
IFLA_AF_SPEC = 26
IFLA_INET_CONF = 1
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

# include/uapi/linux/ip.h, enum IPV4_DEVCONF_*
DEVCONF = {"forwarding": 1, "proxy_arp": 3, "accept_redirects": 4, "rp_filter": 8, "promote_secondaries": 21,
           "route_localnet": 27}

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_NLA = struct.Struct("=HH")


class DevconfError(OSError):
    """The kernel refused (errno set), or the interface does not exist (ENODEV)."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def _nla(kind: int, payload: bytes) -> bytes:
    raw = _NLA.pack(_NLA.size + len(payload), kind) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    while offset + _NLA.size <= len(data):
        length, kind = _NLA.unpack_from(data, offset)
        if length < _NLA.size:
            break
        out[kind & NLA_TYPE_MASK] = data[offset + _NLA.size : offset + length]
        offset += _align(length)
    return out


def _request(msg_type: int, flags: int, ifname: str, attrs: bytes = b"") -> list[tuple[int, bytes]]:
    """Send one request for link ``ifname``; the kernel's answers as (type, payload)."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _nla(IFLA_IFNAME, ifname.encode() + b"\0") + attrs
    seq = int.from_bytes(os.urandom(4), "little")
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0) + body)
        replies = []
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, rseq, _pid = _NLMSGHDR.unpack_from(data, offset)
                payload = data[offset + _NLMSGHDR.size : offset + length]
                offset += _align(length)
                if rseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise DevconfError(code, f"{os.strerror(code)} ({ifname})")
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                replies.append((kind, payload))
                if not flags & NLM_F_ACK:
                    return replies


def read(ifname: str, name: str) -> int | None:
    """Current value of ``net.ipv4.conf.<ifname>.<name>``; None if the link does not exist."""
    index = DEVCONF[name]
    try:
        replies = _request(RTM_GETLINK, 0, ifname)
    except DevconfError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise
    for _kind, payload in replies:
        af_spec = _attrs(payload[_IFINFOMSG.size :]).get(IFLA_AF_SPEC)
        inet = _attrs(af_spec or b"").get(socket.AF_INET)
        conf = _attrs(inet or b"").get(IFLA_INET_CONF)
        if conf is not None and len(conf) >= index * 4:
            return struct.unpack_from("=I", conf, (index - 1) * 4)[0]
    return None


def write(ifname: str, name: str, value: int) -> None:
    """Set ``net.ipv4.conf.<ifname>.<name>`` = ``value`` (RTM_SETLINK, acknowledged)."""
    conf = _nla(DEVCONF[name], struct.pack("=I", value))
    attr = _nla(IFLA_AF_SPEC | NLA_F_NESTED,
                _nla(socket.AF_INET | NLA_F_NESTED, _nla(IFLA_INET_CONF | NLA_F_NESTED, conf)))
    _request(RTM_SETLINK, NLM_F_ACK, ifname, attr)
