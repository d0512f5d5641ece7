"""The one netlink codec and socket of the plugin: requests, dumps and event subscriptions on raw
NETLINK_ROUTE and NETLINK_NETFILTER sockets, with the few message layouts we need packed by hand.

pyroute2's ``IPRoute`` (used by :mod:`.links` and :mod:`.routes`) is the library's; everything the
plugin builds or parses itself goes through here. Works in the process's current network namespace.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from typing import Iterable

from pyroute2.netlink.exceptions import NetlinkError

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
ENOBUFS = 105

# rtnetlink message types
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWRULE, RTM_DELRULE = 32, 33

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
FIB_RULE_HDR = 12
NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big endian)

Message = tuple[int, bytes]  # (nlmsg type, body after the header)


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0)) + payload
    return raw + b"\0" * (-len(raw) % 4)


def nla_str(kind: int, text: str) -> bytes:
    return nla(kind, text.encode() + b"\0")


def nla_u32(kind: int, value: int) -> bytes:
    return nla(kind, struct.pack("=I", value))


def attrs(data: bytes, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The attributes in ``data[offset:end]``: type (flags masked) → payload; the first of a type wins."""
    end = len(data) if end is None else min(end, len(data))
    found: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found.setdefault(kind & NLA_TYPE_MASK, data[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return found


def text(raw: bytes | None) -> str:
    """A NUL-terminated string attribute."""
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw else ""


def u32(raw: bytes | None, default: int = 0) -> int:
    return struct.unpack("=I", raw[:4])[0] if raw and len(raw) >= 4 else default


def messages(data: bytes) -> Iterable[tuple[int, int, int, bytes]]:
    """The messages of one datagram: (type, flags, seq, body)."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            break
        yield kind, flags, seq, data[offset + HEADER.size : offset + length]
        offset += (length + 3) & ~3


def open_socket(protocol: int = NETLINK_ROUTE, kind: int = socket.SOCK_RAW) -> socket.socket:
    """A netlink socket of ``protocol`` in the calling thread's network namespace (a socket stays in the
    netns it was made in); ``kind`` SOCK_DGRAM for pyroute2, which drives it as a datagram transport."""
    return socket.socket(socket.AF_NETLINK, kind, protocol)


def request(kind: int, flags: int, body: bytes, *, protocol: int = NETLINK_ROUTE,
            strict: bool = False) -> list[Message]:
    """One request: the kernel's answers up to its DONE (a dump) or its acknowledgement. Raises
    NetlinkError with the kernel's errno. ``strict``: NETLINK_GET_STRICT_CHK, so a dump honours the
    request's filters (kernels before 4.20 ignore it: callers filter again)."""
    seq = int.from_bytes(os.urandom(4), "little")
    replies: list[Message] = []
    with open_socket(protocol) as sock:
        if strict:
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            except OSError:
                pass
        sock.bind((0, 0))
        sock.send(HEADER.pack(HEADER.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body)
        while True:
            data = sock.recv(1 << 16)
            for rkind, _flags, rseq, payload in messages(data):
                if rseq != seq:
                    continue
                if rkind == NLMSG_DONE:
                    return replies
                if rkind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return replies
                replies.append((rkind, payload))
                if not flags & (NLM_F_ACK | NLM_F_DUMP):
                    return replies


def ack(kind: int, flags: int, body: bytes, protocol: int = NETLINK_ROUTE) -> bytes:
    """An acknowledged request; the body of the last answer (for a GET), else b""."""
    replies = request(kind, NLM_F_ACK | flags, body, protocol=protocol)
    return replies[-1][1] if replies else b""


def ifinfo(index: int = 0, flags: int = 0, change: int = 0, family: int = socket.AF_UNSPEC) -> bytes:
    return IFINFOMSG.pack(family, 0, index, flags, change)


def group_mask(groups: Iterable[int]) -> int:
    mask = 0
    for group in groups:
        mask |= 1 << (group - 1)
    return mask


class Subscription:
    """Raw sockets bound to multicast groups: ``{protocol: groups}``. A socket that cannot be opened
    (no nf_tables in this kernel) is left out. :meth:`read` returns (protocol, type, body) of what
    arrived within a timeout, or None when the kernel dropped some (ENOBUFS: assume anything changed)."""

    def __init__(self, groups: dict[int, Iterable[int]]) -> None:
        self.socks: dict[socket.socket, int] = {}
        for protocol, wanted in groups.items():
            try:
                sock = open_socket(protocol)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.bind((0, group_mask(wanted)))
                sock.setblocking(False)
            except OSError:
                continue
            self.socks[sock] = protocol

    def read(self, timeout: float) -> list[tuple[int, int, bytes]] | None:
        ready, _, _ = select.select(list(self.socks), [], [], max(0.0, timeout))
        out: list[tuple[int, int, bytes]] = []
        dropped = False
        for sock in ready:
            while True:
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno != ENOBUFS:
                        raise
                    dropped = True
                    continue
                out += [(self.socks[sock], kind, body) for kind, _f, _s, body in messages(data)]
        return None if dropped else out

    def close(self) -> None:
        for sock in self.socks:
            sock.close()

