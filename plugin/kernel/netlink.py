"""The one netlink codec and socket of the plugin: requests, dumps and event subscriptions on raw
NETLINK_ROUTE and NETLINK_NETFILTER sockets, with the few message layouts we need packed by hand, and
:class:`Rtnl`, rtnetlink over one socket with links, addresses, routes, rules and neighbours decoded
into :class:`Record` (pyroute2's attribute names, not its ``IPRoute``: docs/ARCHITECTURE.md, *Processes*).
Errors are pyroute2's ``NetlinkError`` (``.code``: the kernel's errno)."""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
from typing import Iterable, Iterator

from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
ENOBUFS = 105

# rtnetlink message types
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
FIBRULEMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, res1, res2, action, flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
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


def open_socket(protocol: int = NETLINK_ROUTE) -> socket.socket:
    """A netlink socket of ``protocol`` in the calling thread's network namespace (a socket stays in the
    netns it was made in)."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)


def _exchange(sock: socket.socket, kind: int, flags: int, body: bytes) -> Iterator[Message]:
    seq = int.from_bytes(os.urandom(4), "little")
    sock.send(HEADER.pack(HEADER.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body)
    while True:
        data = sock.recv(1 << 16)
        for rkind, _flags, rseq, payload in messages(data):
            if rseq != seq:
                continue
            if rkind == NLMSG_DONE:  # a dump the kernel could not finish says why here
                code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                if code > 0:
                    raise NetlinkError(code, os.strerror(code))
                return
            if rkind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    raise NetlinkError(code, os.strerror(code))
                return
            yield rkind, payload
            if not flags & (NLM_F_ACK | NLM_F_DUMP):
                return


def stream(kind: int, flags: int, body: bytes, *, protocol: int = NETLINK_ROUTE,
           strict: bool = False) -> Iterator[Message]:
    """One request on a socket of its own: the kernel's answers, as they come, up to its DONE (a dump)
    or its acknowledgement; a dump of any size in 64 KiB of memory. Raises NetlinkError with the kernel's
    errno. ``strict``: NETLINK_GET_STRICT_CHK, so a dump honours the request's filters (kernels before
    4.20 ignore it: callers filter again)."""
    with open_socket(protocol) as sock:
        if strict:
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            except OSError:
                pass
        sock.bind((0, 0))
        yield from _exchange(sock, kind, flags, body)


def request(kind: int, flags: int, body: bytes, *, protocol: int = NETLINK_ROUTE,
            strict: bool = False) -> list[Message]:
    """:func:`stream`'s answers, all of them."""
    return list(stream(kind, flags, body, protocol=protocol, strict=strict))


def ack(kind: int, flags: int, body: bytes, protocol: int = NETLINK_ROUTE) -> bytes:
    """An acknowledged request; the body of the last answer (for a GET), else b""."""
    replies = request(kind, NLM_F_ACK | flags, body, protocol=protocol)
    return replies[-1][1] if replies else b""


def ifinfo(index: int = 0, flags: int = 0, change: int = 0, family: int = socket.AF_UNSPEC) -> bytes:
    return IFINFOMSG.pack(family, 0, index, flags, change)


# -- rtnetlink objects ------------------------------------------------------------------------------
def _ip(raw: bytes) -> str | None:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw) if len(raw) in (4, 16) else None


_DECODE = {"str": text, "u32": lambda raw: u32(raw), "u8": lambda raw: raw[0] if raw else 0, "ip": _ip,
           "mac": lambda raw: ":".join(f"{b:02x}" for b in raw),
           "kind": lambda raw: text(attrs(raw).get(1))}  # IFLA_LINKINFO's IFLA_INFO_KIND: bridge, veth, ...
# message type → (header layout, header field names, {attribute type: (pyroute2's name, decoding)})
_LAYOUTS = {
    RTM_NEWLINK: (IFINFOMSG, ("family", "ifi_type", "index", "flags", "change"),
                  {1: ("IFLA_ADDRESS", "mac"), 3: ("IFLA_IFNAME", "str"), 4: ("IFLA_MTU", "u32"),
                   10: ("IFLA_MASTER", "u32"), 18: ("IFLA_INFO_KIND", "kind"), 20: ("IFLA_IFALIAS", "str")}),
    RTM_NEWADDR: (IFADDRMSG, ("family", "prefixlen", "flags", "scope", "index"),
                  {1: ("IFA_ADDRESS", "ip"), 2: ("IFA_LOCAL", "ip"), 3: ("IFA_LABEL", "str"), 8: ("IFA_FLAGS", "u32")}),
    RTM_NEWROUTE: (RTMSG, ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type", "flags"),
                   {1: ("RTA_DST", "ip"), 4: ("RTA_OIF", "u32"), 5: ("RTA_GATEWAY", "ip"), 6: ("RTA_PRIORITY", "u32"),
                    7: ("RTA_PREFSRC", "ip"), 15: ("RTA_TABLE", "u32")}),
    RTM_NEWRULE: (FIBRULEMSG, ("family", "dst_len", "src_len", "tos", "table", "res1", "res2", "action", "flags"),
                  {1: ("FRA_DST", "ip"), 2: ("FRA_SRC", "ip"), 6: ("FRA_PRIORITY", "u32"), 10: ("FRA_FWMARK", "u32"),
                   14: ("FRA_SUPPRESS_PREFIXLEN", "u32"), 15: ("FRA_TABLE", "u32"), 16: ("FRA_FWMASK", "u32"),
                   21: ("FRA_PROTOCOL", "u8")}),
    RTM_NEWNEIGH: (NDMSG, ("family", "ifindex", "state", "flags", "ndm_type"),
                   {1: ("NDA_DST", "ip"), 2: ("NDA_LLADDR", "mac")}),
}


def decodable(kind: int, body: bytes) -> bool:
    """Is this a link, address, route, rule or neighbour message whole enough for :class:`Record`?"""
    layout = _LAYOUTS.get(kind & ~3)
    return layout is not None and len(body) >= layout[0].size


class Record:
    """A link, address, route, rule or neighbour: header fields by name (``msg["index"]``), attributes
    by pyroute2's names (``msg.get_attr("IFLA_IFNAME")``, None when absent)."""

    __slots__ = ("fields", "attrs")

    def __init__(self, kind: int, body: bytes) -> None:
        layout, names, known = _LAYOUTS[kind & ~3]  # RTM_NEWx, RTM_DELx, RTM_GETx share the layout
        self.fields = dict(zip(names, layout.unpack_from(body), strict=True))
        self.attrs = {}
        for code, raw in attrs(body, layout.size).items():
            if code in known:
                name, how = known[code]
                self.attrs[name] = _DECODE[how](raw)

    def __getitem__(self, key: str) -> int:
        return self.fields[key]

    def get_attr(self, name: str) -> object:
        return self.attrs.get(name)

    def __repr__(self) -> str:
        return f"Record({self.fields}, {self.attrs})"


class Rtnl:
    """rtnetlink requests over one socket: this thread's namespace's, or ``sock``, one made in another
    (:mod:`.netns`). A context manager, like pyroute2's ``IPRoute``, whose reads it keeps the names of."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock if sock is not None else open_socket()
        self.sock.bind((0, 0))

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def ack(self, kind: int, flags: int, body: bytes) -> bytes:
        """An acknowledged change (or a GET): the body of the last answer, else b""."""
        replies = list(_exchange(self.sock, kind, NLM_F_ACK | flags, body))
        return replies[-1][1] if replies else b""

    def _dump(self, kind: int, body: bytes, flags: int = NLM_F_DUMP) -> list[Record]:
        want = kind - 2  # RTM_GETx → RTM_NEWx
        return [Record(rkind, payload) for rkind, payload in _exchange(self.sock, kind, flags, body) if rkind == want]

    def get_links(self, index: int | None = None) -> list[Record]:
        """Every link, or the one of ``index`` (NetlinkError ENODEV if there is none)."""
        if index is not None:
            return self._dump(RTM_GETLINK, ifinfo(index), NLM_F_ACK)
        return self._dump(RTM_GETLINK, ifinfo())

    def get_link_named(self, name: str) -> Record:
        """The link called ``name``: one lookup, not a dump (NetlinkError ENODEV if there is none)."""
        return self._dump(RTM_GETLINK, ifinfo() + nla_str(3, name), NLM_F_ACK)[0]

    def get_addr(self, family: int = socket.AF_UNSPEC) -> list[Record]:
        return self._dump(RTM_GETADDR, IFADDRMSG.pack(family, 0, 0, 0, 0))

    def get_routes(self, family: int) -> list[Record]:
        """The routes of every table of a family."""
        return self._dump(RTM_GETROUTE, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))

    def get_rules(self, family: int) -> list[Record]:
        return self._dump(RTM_GETRULE, FIBRULEMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))

    def get_neighbours(self, family: int, ifindex: int) -> list[Record]:
        return [n for n in self._dump(RTM_GETNEIGH, NDMSG.pack(family, 0, 0, 0, 0)) if n["ifindex"] == ifindex]


SO_RCVBUFFORCE = 33
RCVBUF = 8 << 20  # a limit, not an allocation: what a burst of events may queue before the kernel drops some


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
            wanted = sorted(wanted)
            try:
                sock = open_socket(protocol)
            except OSError as exc:
                log.warning("no kernel events of netlink protocol %d: %s", protocol, exc)
                continue
            try:
                try:  # past net.core.rmem_max, which a burst may overflow
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
                except PermissionError:  # without CAP_NET_ADMIN: what rmem_max allows
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                sock.bind((0, group_mask(wanted)))
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                log.warning("no kernel events of netlink protocol %d (groups %s): %s", protocol, wanted, exc)
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

