"""The kernel's announcements the plugin reacts to, from one subscription: links, addresses, routes
and rules of both families (rtnetlink), and nf_tables deletions and new chains (nfnetlink). Parsed just
enough to tell two things (both pure): whether something of ours may have been removed (:func:`drift`),
and whether a parent NIC changed (:func:`touches_parent`); the plugin's own nf_tables transactions are left
out (:func:`others`). Legacy iptables sends no events: there the period is all there is."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from . import netlink as nl
from . import proc
from .tags import ALIAS_PREFIX, LINK_BRIDGE, RT_PROTO

RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE = 1, 5, 7, 8
RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE = 9, 11, 19
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_NEWGEN = 2, 3, 5, 8, 15
NFTA_GEN_PROC_PID = 2
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
    if kind not in (nl.RTM_NEWLINK, nl.RTM_DELLINK, nl.RTM_NEWADDR, nl.RTM_DELADDR, nl.RTM_NEWROUTE, nl.RTM_DELROUTE,
                    nl.RTM_DELRULE) or not nl.decodable(kind, body):
        return None
    if kind in (nl.RTM_NEWROUTE, nl.RTM_DELROUTE) and body[1] and not (kind == nl.RTM_DELROUTE and body[5] == RT_PROTO):
        return None  # by the header alone: neither a default route nor one of ours removed (a veth's routes)
    msg = nl.Record(kind, body)
    if kind in (nl.RTM_NEWLINK, nl.RTM_DELLINK):
        return Event(kind, index=msg["index"], name=msg.get_attr("IFLA_IFNAME") or "", flags=msg["flags"],
                     mtu=msg.get_attr("IFLA_MTU") or 0, alias=msg.get_attr("IFLA_IFALIAS") or "")
    if kind in (nl.RTM_NEWADDR, nl.RTM_DELADDR):
        return Event(kind, index=msg["index"], name=msg.get_attr("IFA_LABEL") or "")
    if kind in (nl.RTM_NEWROUTE, nl.RTM_DELROUTE):
        return Event(kind, index=msg.get_attr("RTA_OIF") or 0, dst_len=msg["dst_len"], proto=msg["proto"])
    return Event(kind, proto=msg.get_attr("FRA_PROTOCOL") or 0)


def others(events: Iterable[Event], mine: Callable[[int], bool], pending: list[Event]) -> list[Event]:
    """Pure but for ``pending`` (and ``mine``): the events without the nf_tables changes committed by a
    thread that is ``mine``, and without the generations. Each transaction's messages are followed by its
    generation, which names the committing thread; changes whose generation has not arrived yet stay in
    ``pending``."""
    out: list[Event] = []
    for e in events:
        if e.kind == FIREWALL:
            pending.append(e)
        elif e.kind == GENERATION:
            if not mine(e.index):
                out += pending
            pending.clear()
        else:
            out.append(e)
    return out


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


def committed_by_us(tid: int) -> bool:
    """Was a transaction committed by ``tid`` (the kernel names the committing thread) one of multinic's
    own: a thread of this process (a verb, the healer's repair) or of another worker of the same
    ``multinic serve`` (a child of our parent with our command line)?"""
    if tid == os.getpid() or os.path.exists(f"/proc/self/task/{tid}"):
        return True
    found = proc.status(tid)
    if found is None or found[1] != os.getppid() or found[1] <= 1:
        return False
    try:
        with open(f"/proc/{tid}/cmdline", "rb") as theirs, open("/proc/self/cmdline", "rb") as mine:
            return theirs.read() == mine.read()
    except OSError:
        return False


class Listener:
    """The one subscription the healer reads: :meth:`read` gives the events within a timeout, or None
    when the kernel dropped some (then assume anything changed)."""

    def __init__(self) -> None:
        self.subscription = nl.Subscription({
            nl.NETLINK_ROUTE: (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE,
                               RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE),
            nl.NETLINK_NETFILTER: (NFNLGRP_NFTABLES,),
        })
        self.pending: list[Event] = []  # nf_tables changes whose transaction's generation is still to come

    def read(self, timeout: float) -> list[Event] | None:
        """What arrived within ``timeout``, but for multinic's own nf_tables transactions (a verb or a
        repair has just written them); None when the kernel dropped some."""
        raw = self.subscription.read(timeout)
        if raw is None:
            self.pending.clear()
            return None
        return others([e for protocol, kind, body in raw if (e := parse(protocol, kind, body)) is not None],
                      committed_by_us, self.pending)

    def burst(self, timeout: float, quiet: float, longest: float) -> list[Event] | None:
        """The events of one burst: the first within ``timeout``, then more until none comes for ``quiet``
        (or ``longest`` has passed since the first); None when the kernel dropped some. Within a burst the
        thread looks once every ``quiet`` rather than at each message (a container's start sends ~20)."""
        seen = self.read(timeout)
        until = time.monotonic() + longest
        while seen and time.monotonic() < until:
            time.sleep(quiet)
            more = self.read(0)
            if more is None:
                return None
            if not more and not self.pending:
                break
            seen += more
        return seen

    def close(self) -> None:
        self.subscription.close()

