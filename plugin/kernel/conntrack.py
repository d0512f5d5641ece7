"""Conntrack flows of UDP ports that are no longer published, forgotten over ctnetlink (as Docker's
bridge does): a UDP client that never pauses would otherwise stay on the old DNAT, possibly towards an
address IPAM has handed to another container. The kernel filters its walk of the flow table by protocol
and port (CTA_FILTER, Linux 5.8+; older kernels send every flow and the match below filters), the walk
is read as it comes, and each matching flow is one delete: no process, and memory for the matches only,
however many flows the host tracks.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Iterable, Iterator

from pyroute2.netlink.exceptions import NetlinkError

from ..errors import Failure
from ..plan.state import PublishedPort
from . import netlink as nl

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
CTA_TUPLE_ORIG, CTA_FILTER = 1, 25
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_DST, CTA_IP_V6_DST = 2, 4
CTA_PROTO_NUM, CTA_PROTO_DST_PORT = 1, 3
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
FILTER_PROTO_NUM, FILTER_PROTO_DST_PORT = 1 << 3, 1 << 5  # CTA_FILTER_F_CTA_PROTO_*
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
FILTERED_WALKS_MAX = 8  # more (protocol, port) pairs than this: one unfiltered walk is cheaper
Flow = tuple[bytes, int, int, str]  # the CTA_TUPLE_ORIG attribute as sent, protocol, destination port, address


def _filter(proto: int, port: int) -> bytes:
    """The dump's filter: the original direction's protocol and destination port."""
    tuple_proto = nl.nla(CTA_PROTO_NUM, bytes([proto])) + nl.nla(CTA_PROTO_DST_PORT, struct.pack("!H", port))
    return (nl.nla(CTA_TUPLE_ORIG, nl.nla(CTA_TUPLE_PROTO, tuple_proto, nested=True), nested=True)
            + nl.nla(CTA_FILTER, nl.nla_u32(CTA_FILTER_ORIG_FLAGS, FILTER_PROTO_NUM | FILTER_PROTO_DST_PORT)
                     + nl.nla_u32(CTA_FILTER_REPLY_FLAGS, 0), nested=True))


def _flows(family: int, attrs: bytes = b"") -> Iterator[Flow]:
    """The flows of ``family`` (AF_UNSPEC: both) the kernel's walk yields, as they come."""
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    for _kind, body in nl.stream(kind, nl.NLM_F_DUMP, nl.NFGENMSG.pack(family, 0, 0) + attrs,
                                 protocol=nl.NETLINK_NETFILTER):
        orig = nl.attrs(body, nl.NFGENMSG.size).get(CTA_TUPLE_ORIG)
        if orig is None:
            continue
        parts = nl.attrs(orig)
        proto, ip = nl.attrs(parts.get(CTA_TUPLE_PROTO) or b""), nl.attrs(parts.get(CTA_TUPLE_IP) or b"")
        port = proto.get(CTA_PROTO_DST_PORT)
        dst = ip.get(CTA_IP_V4_DST) or ip.get(CTA_IP_V6_DST)
        if port is None or dst is None or not proto.get(CTA_PROTO_NUM):
            continue
        yield (nl.nla(CTA_TUPLE_ORIG, orig, nested=True), proto[CTA_PROTO_NUM][0], struct.unpack("!H", port)[0],
               str(ipaddress.ip_address(dst)))


def _walks(keys: set[tuple[int, int]]) -> Iterator[Flow]:
    """The flows that may match: a filtered walk per family and (protocol, port), or one walk of all."""
    if len(keys) > FILTERED_WALKS_MAX:
        yield from _flows(socket.AF_UNSPEC)
        return
    for proto, port in sorted(keys):
        for family in (socket.AF_INET, socket.AF_INET6):
            yield from _flows(family, _filter(proto, port))


def forget(ports: Iterable[PublishedPort]) -> int:
    """Delete the flows whose original destination meets one of ``ports``
    (:meth:`~plugin.plan.state.PublishedPort.lands_on`); how many went. Flows that vanish meanwhile are
    not an error, nor a kernel without conntrack; a process without CAP_NET_ADMIN is a :class:`Failure`."""
    wanted = [(PROTOCOLS.get(p.proto), p.host_port, p) for p in ports]
    keys = {(proto, port) for proto, port, _ in wanted if proto is not None}
    if not keys:
        return 0
    try:
        gone = [(tuple_attr, dst) for tuple_attr, proto, port, dst in _walks(keys)
                if any(proto == p and port == hp and published.lands_on(dst) for p, hp, published in wanted)]
    except (NetlinkError, OSError) as exc:
        code = getattr(exc, "code", None) or getattr(exc, "errno", None)
        if code in (errno.EOPNOTSUPP, errno.ENOENT):
            return 0  # no conntrack here: nothing to forget
        if code in (errno.EPERM, errno.EACCES):
            raise Failure(f"cannot forget the conntrack flows of ports no longer published ({exc}): reading "
                          "them over ctnetlink needs CAP_NET_ADMIN, which this process lacks") from exc
        raise
    deleted = 0
    for tuple_attr, dst in gone:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        try:
            nl.ack((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, 0,
                   nl.NFGENMSG.pack(family, 0, 0) + tuple_attr, protocol=nl.NETLINK_NETFILTER)
            deleted += 1
        except NetlinkError as exc:
            if exc.code != errno.ENOENT:
                raise
    return deleted
