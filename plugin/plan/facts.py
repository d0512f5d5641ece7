"""What planning and the desired state depend on but the plugin does not own: the parents' addresses,
tables in use, others' default gateways, IPv6 settings. Plain data, read by :mod:`plugin.kernel.facts`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class ParentFacts:
    """What a parent NIC looks like right now (read through netlink, never /sys)."""

    ifname: str
    exists: bool
    addresses: tuple[ipaddress.IPv4Interface, ...] = ()
    mtu: int = 1500
    up: bool = True
    # Global IPv6 addresses ports are published on and egress leaves from: neither temporary (privacy),
    # deprecated, tentative nor link-local. Their on-link prefixes (temporary addresses' too).
    addresses6: tuple[ipaddress.IPv6Interface, ...] = ()
    prefixes6: tuple[ipaddress.IPv6Network, ...] = ()

    @property
    def primary(self) -> ipaddress.IPv4Interface | None:
        return self.addresses[0] if self.addresses else None


@dataclass(frozen=True)
class HostFacts:
    """A snapshot of what planning needs to know about the host, read once per verb, so planning itself
    is pure and testable without a kernel."""

    parents: Mapping[str, ParentFacts] = field(default_factory=dict)
    links: frozenset[str] = frozenset()
    # Route tables holding any route, or named by an ip rule that is not ours.
    tables_in_use: frozenset[int] = frozenset()
    # ifname → next hop of a default route through it that is not ours (any table).
    default_gateways: Mapping[str, ipaddress.IPv4Address] = field(default_factory=dict)
    default_gateways6: Mapping[str, ipaddress.IPv6Address] = field(default_factory=dict)
    local_addresses: frozenset[str] = frozenset()
    # IPv6 host settings, read when an IPv6 network is planned: net.ipv6.conf.<if>.accept_ra of each NIC,
    # the NICs whose default route came from a router advertisement, net.ipv6.conf.all.forwarding.
    accept_ra: Mapping[str, int] = field(default_factory=dict)
    ra_default: frozenset[str] = frozenset()
    forwarding6: str | None = None
    # Bridges not ours that route IPv6 (a global IPv6 address): they need IPv6 forwarding too.
    foreign_ipv6_bridges: frozenset[str] = frozenset()

    def parent(self, ifname: str) -> ParentFacts:
        return self.parents.get(ifname) or ParentFacts(ifname=ifname, exists=False)
