"""The kernel's announcements the plugin reacts to, from one subscription: links, addresses, routes
and rules of both families (rtnetlink), and nf_tables deletions and new chains (nfnetlink). Parsed just
enough to tell two things (both pure): whether something of ours may have been removed (:func:`drift`),
and whether a parent NIC changed (:func:`touches_parent`); the plugin's own nf_tables transactions are left
out (:func:`others`). Legacy iptables sends no events: there the period is all there is."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from . import netlink as nl
from .tags import ALIAS_PREFIX, LINK_BRIDGE, RT_PROTO

RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE = 1, 5, 7, 8
RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE = 9, 11, 19
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_NEWGEN = 2, 3, 5, 8, 15
NFTA_GEN_PROC_PID = 2
IFLA_IFNAME, IFLA_MTU, IFLA_IFALIAS = 3, 4, 20
IFA_LABEL = 3
RTA_OIF = 4
FRA_PROTOCOL = 21
IFF_UP, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x40, 0x10000
LINK_FLAGS = IFF_UP | IFF_RUNNING | IFF_LOWER_UP
FIREWALL = -1  # Event.kind of an nf_tables deletion
GENERATION = -2  # Event.kind of the end of an nf_tables transaction; Event.index: the committing process
BRIDGE_ALIAS = f"{ALIAS_PREFIX}{LINK_BRIDGE}:"
KIND_NAMES = {nl.RTM_NEWLINK: "link", nl.RTM_DELLINK: "link deleted", nl.RTM_NEWADDR: "address added",
              nl.RTM_DELADDR: "address removed", nl.RTM_NEWROUTE: "default route added",
              nl.RTM_DELROUTE: "default route removed", nl.RTM_DELRULE: "rule deleted", FIREWALL: "firewall"}


@dataclass(frozen=True)
class Event:
    kind: int
    index: int = 0
    name: str = ""
    dst_len: int = -1
    proto: int = 0
    mtu: int = 0
    flags: int = 0
    alias: str = ""

    @property
    def link_key(self) -> tuple[str, int, int]:
        """What of a link matters to us: a RTM_NEWLINK that changes none of it (our own rp_filter write
        over netlink, statistics) is not a change."""
        return self.name, self.mtu, self.flags & LINK_FLAGS

    def describe(self) -> str:
        return f"{KIND_NAMES.get(self.kind, self.kind)} {self.name or self.index}"


def parse(protocol: int, kind: int, body: bytes) -> Event | None:
    """One message → an :class:`Event` (None for what we never look at)."""
    if protocol == nl.NETLINK_NETFILTER:
        # Deletions may be of ours; a new chain may be Docker's iptables arriving after us (its FORWARD DROP,
        # which the native backend then opens). Element changes (a published port) are never looked at.
        if kind >> 8 != NFNL_SUBSYS_NFTABLES:
            return None
        if kind & 0xFF == NFT_MSG_NEWGEN and len(body) >= nl.NFGENMSG.size:
            pid = nl.attrs(body, nl.NFGENMSG.size).get(NFTA_GEN_PROC_PID)
            return Event(GENERATION, index=int.from_bytes(pid[:4], "big") if pid else 0)
        watched = kind & 0xFF in (NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE)
        return Event(FIREWALL) if watched else None
    if kind in (nl.RTM_NEWLINK, nl.RTM_DELLINK) and len(body) >= nl.IFINFOMSG.size:
        _family, _type, index, flags, _change = nl.IFINFOMSG.unpack_from(body)
        found = nl.attrs(body, nl.IFINFOMSG.size)
        return Event(kind, index=index, name=nl.text(found.get(IFLA_IFNAME)), flags=flags,
                     mtu=nl.u32(found.get(IFLA_MTU)), alias=nl.text(found.get(IFLA_IFALIAS)))
    if kind in (nl.RTM_NEWADDR, nl.RTM_DELADDR) and len(body) >= nl.IFADDRMSG.size:
        index = nl.IFADDRMSG.unpack_from(body)[4]
        return Event(kind, index=index, name=nl.text(nl.attrs(body, nl.IFADDRMSG.size).get(IFA_LABEL)))
    if kind in (nl.RTM_NEWROUTE, nl.RTM_DELROUTE) and len(body) >= nl.RTMSG.size:
        _family, dst_len, _src_len, _tos, _table, proto, _scope, _type, _flags = nl.RTMSG.unpack_from(body)
        return Event(kind, index=nl.u32(nl.attrs(body, nl.RTMSG.size).get(RTA_OIF)), dst_len=dst_len, proto=proto)
    if kind == nl.RTM_DELRULE and len(body) >= nl.FIB_RULE_HDR:
        proto = nl.attrs(body, nl.FIB_RULE_HDR).get(FRA_PROTOCOL, b"\0")[0]
        return Event(kind, proto=proto)
    return None


def others(events: Iterable[Event], me: int) -> list[Event]:
    """Pure: the events without the nf_tables changes that process ``me`` committed itself (each
    transaction's messages are followed by its generation, which names the committing process), and
    without the generations."""
    out: list[Event] = []
    pending: list[Event] = []
    for e in events:
        if e.kind == FIREWALL:
            pending.append(e)
        elif e.kind == GENERATION:
            if e.index != me:
                out += pending
            pending = []
        else:
            out.append(e)
    return out + pending  # a transaction whose generation has not arrived: counted


def drift(events: Iterable[Event]) -> set[str]:
    """Pure: what may have been taken from us: ``"netlink"`` (a deleted route or rule of ours, a deleted
    bridge of ours; container veths come and go all the time and are not drift), ``"firewall"``."""
    kinds = set()
    for e in events:
        if e.kind == FIREWALL:
            kinds.add("firewall")
        elif (e.kind in (nl.RTM_DELROUTE, nl.RTM_DELRULE) and e.proto == RT_PROTO) or (
                e.kind == nl.RTM_DELLINK and e.alias.startswith(BRIDGE_ALIAS)):
            kinds.add("netlink")
    return kinds


def touches_parent(event: Event, parents: dict[str, int | None], links: dict[int, tuple] | None = None) -> bool:
    """Pure but for ``links``: does the event change something of a parent NIC (by name, or by the index
    it had)? A default route of others through it, its addresses, its link (``links``: index →
    :attr:`Event.link_key` last seen, updated here, so only a real change counts)."""
    indexes = {i for i in parents.values() if i}
    if event.kind in (nl.RTM_NEWROUTE, nl.RTM_DELROUTE):
        return event.dst_len == 0 and event.proto != RT_PROTO and event.index in indexes
    if event.kind not in (nl.RTM_NEWLINK, nl.RTM_DELLINK, nl.RTM_NEWADDR, nl.RTM_DELADDR):
        return False
    if not (event.name in parents or event.index in indexes):
        return False
    if event.kind == nl.RTM_NEWLINK and links is not None:
        before = links.get(event.index)
        links[event.index] = event.link_key
        return before != event.link_key
    return True


class Listener:
    """The one subscription the healer reads: :meth:`read` gives the events within a timeout, or None
    when the kernel dropped some (then assume anything changed)."""

    def __init__(self) -> None:
        self.subscription = nl.Subscription({
            nl.NETLINK_ROUTE: (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE,
                               RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE),
            nl.NETLINK_NETFILTER: (NFNLGRP_NFTABLES,),
        })

    def read(self, timeout: float) -> list[Event] | None:
        """What arrived within ``timeout``, but for this process's own nf_tables transactions (the worker
        hosting the loops has just written them itself)."""
        raw = self.subscription.read(timeout)
        if raw is None:
            return None
        found = [e for protocol, kind, body in raw if (e := parse(protocol, kind, body)) is not None]
        if found and found[-1].kind == FIREWALL:  # its transaction's generation follows at once
            more = self.subscription.read(0.05)
            if more is None:
                return None
            found += [e for protocol, kind, body in more if (e := parse(protocol, kind, body)) is not None]
        return others(found, os.getpid())

    def close(self) -> None:
        self.subscription.close()

