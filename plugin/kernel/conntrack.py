"""Conntrack flows of UDP ports that are no longer published, forgotten over ctnetlink (as Docker's
bridge does): a UDP client that never pauses would otherwise stay on the old DNAT, possibly towards an
address IPAM has handed to another container. One dump of both families (the kernel walks its whole
flow table for it: 6-7 ms on an idle host, so only a UDP port pays it), then one delete per matching
flow, no process."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Iterable

from pyroute2.netlink.exceptions import NetlinkError

from ..plan.state import PublishedPort
from . import netlink as nl

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
CTA_TUPLE_ORIG = 1
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_DST, CTA_IP_V6_DST = 2, 4
CTA_PROTO_NUM, CTA_PROTO_DST_PORT = 1, 3
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}


def _flows(family: int) -> list[tuple[bytes, int, int, str]]:
    """(the CTA_TUPLE_ORIG attribute as sent, protocol, original destination port, address) of every flow."""
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    out = []
    for _kind, body in nl.request(kind, nl.NLM_F_DUMP, nl.NFGENMSG.pack(family, 0, 0), protocol=nl.NETLINK_NETFILTER):
        orig = nl.attrs(body, nl.NFGENMSG.size).get(CTA_TUPLE_ORIG)
        if orig is None:
            continue
        parts = nl.attrs(orig)
        proto, ip = nl.attrs(parts.get(CTA_TUPLE_PROTO) or b""), nl.attrs(parts.get(CTA_TUPLE_IP) or b"")
        port = proto.get(CTA_PROTO_DST_PORT)
        dst = ip.get(CTA_IP_V4_DST) or ip.get(CTA_IP_V6_DST)
        if port is None or dst is None or not proto.get(CTA_PROTO_NUM):
            continue
        out.append((nl.nla(CTA_TUPLE_ORIG, orig, nested=True), proto[CTA_PROTO_NUM][0], struct.unpack("!H", port)[0],
                    str(ipaddress.ip_address(dst))))
    return out


def forget(ports: Iterable[PublishedPort]) -> int:
    """Delete the flows whose original destination meets one of ``ports``
    (:meth:`~plugin.plan.state.PublishedPort.lands_on`); how many went. Flows that vanish meanwhile are
    not an error."""
    wanted = [(PROTOCOLS.get(p.proto), p.host_port, p) for p in ports]
    if not wanted:
        return 0
    deleted = 0
    try:
        flows = _flows(socket.AF_UNSPEC)  # both families, one walk
    except (NetlinkError, OSError) as exc:
        if getattr(exc, "code", None) in (errno.EOPNOTSUPP, errno.ENOENT) or isinstance(exc, PermissionError):
            return 0  # no conntrack here: nothing to forget
        raise
    for tuple_attr, proto, port, dst in flows:
        if any(proto == p and port == hp and published.lands_on(dst) for p, hp, published in wanted):
            family = socket.AF_INET6 if ":" in dst else socket.AF_INET
            try:
                nl.ack((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, 0,
                       nl.NFGENMSG.pack(family, 0, 0) + tuple_attr, protocol=nl.NETLINK_NETFILTER)
                deleted += 1
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:
                    raise
    return deleted
