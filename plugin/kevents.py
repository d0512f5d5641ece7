"""Kernel events that may mean someone removed what the plugin put there: the healer's wake-ups.

Two raw netlink sockets, parsed just enough to drop the noise (pure :func:`classify`):

- NETLINK_ROUTE, groups link, IPv4 route and IPv4 rule: a deleted route or ip rule carrying our
  protocol (:data:`plugin.tags.RT_PROTO`), or a deleted link carrying our bridge tag, is
  ``"netlink"``. The veths of containers come and go all the time; they are not events here.
- NETLINK_NETFILTER, group NFNLGRP_NFTABLES: a deleted table, chain or rule (iptables-nft
  writes nf_tables) is ``"firewall"``. Additions cannot remove anything of ours. Legacy
  iptables sends no events: there the healer's period is all there is.

A kernel that drops events (ENOBUFS) reports both kinds: anything may have changed.
"""

from __future__ import annotations

import select
import socket
import struct
from typing import Iterable

from .tags import ALIAS_PREFIX, LINK_BRIDGE, RT_PROTO

NETLINK_NETFILTER = 12
RTNLGRP_LINK, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE = 1, 7, 8
NFNLGRP_NFTABLES = 7
RTM_DELLINK, RTM_DELROUTE, RTM_DELRULE = 17, 25, 33
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE = 2, 5, 8
IFLA_IFALIAS = 20
FRA_PROTOCOL = 21
NLMSG_HDR = struct.Struct("=IHHII")
IFINFOMSG = 16
FIB_RULE_HDR = 12
ENOBUFS = 105
BRIDGE_ALIAS = f"{ALIAS_PREFIX}{LINK_BRIDGE}:".encode()


def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def classify(data: bytes, family: int) -> set[str]:
    """Pure: the kinds of drift the messages in one netlink datagram may mean."""
    kinds: set[str] = set()
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size:
            break
        body, end = offset + NLMSG_HDR.size, min(len(data), offset + length)
        if family == NETLINK_NETFILTER:
            if kind >> 8 == NFNL_SUBSYS_NFTABLES and kind & 0xFF in (
                NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE,
            ):
                kinds.add("firewall")
        elif kind == RTM_DELROUTE and body + 6 <= end and data[body + 5] == RT_PROTO:
            kinds.add("netlink")  # rtmsg: family, dst_len, src_len, tos, table, protocol, ...
        elif kind == RTM_DELRULE and _attrs(data, body + FIB_RULE_HDR, end).get(FRA_PROTOCOL, b"")[:1] == bytes(
            [RT_PROTO]
        ):
            kinds.add("netlink")
        elif kind == RTM_DELLINK and _attrs(data, body + IFINFOMSG, end).get(IFLA_IFALIAS, b"").startswith(
            BRIDGE_ALIAS
        ):
            kinds.add("netlink")
        offset += (length + 3) & ~3
    return kinds


def _group_mask(groups: Iterable[int]) -> int:
    mask = 0
    for group in groups:
        mask |= 1 << (group - 1)
    return mask


class Listener:
    """Both sockets; :meth:`wait` returns the kinds seen within a timeout. A socket that cannot
    be opened (no nf_tables in this kernel) is left out."""

    def __init__(self) -> None:
        self.socks: dict[socket.socket, int] = {}
        for family, groups in (
            (socket.NETLINK_ROUTE, (RTNLGRP_LINK, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE)),
            (NETLINK_NETFILTER, (NFNLGRP_NFTABLES,)),
        ):
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, family)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.bind((0, _group_mask(groups)))
                sock.setblocking(False)
            except OSError:
                continue
            self.socks[sock] = family

    def wait(self, timeout: float) -> set[str]:
        ready, _, _ = select.select(list(self.socks), [], [], max(0.0, timeout))
        kinds: set[str] = set()
        for sock in ready:
            while True:
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == ENOBUFS:
                        kinds |= {"netlink", "firewall"}
                        continue
                    raise
                kinds |= classify(data, self.socks[sock])
        return kinds

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
