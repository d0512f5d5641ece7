"""Kernel facts planning and the desired state depend on but the plugin does not own (parent NIC
addresses, tables in use, ...). Plain data: read through :mod:`plugin.netlink`, used by pure code."""

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

    @property
    def primary(self) -> ipaddress.IPv4Interface | None:
        return self.addresses[0] if self.addresses else None


@dataclass(frozen=True)
class HostFacts:
    """A snapshot of what planning needs to know about the host, read once per verb
    (:func:`plugin.netlink.host_facts`), so planning itself is pure and testable without a kernel."""

    parents: Mapping[str, ParentFacts] = field(default_factory=dict)
    links: frozenset[str] = frozenset()
    # Route tables holding any route, or named by an ip rule that is not ours.
    tables_in_use: frozenset[int] = frozenset()
    # ifname → next hop of a default route through it that is not ours (any table).
    default_gateways: Mapping[str, ipaddress.IPv4Address] = field(default_factory=dict)
    local_addresses: frozenset[str] = frozenset()

    def parent(self, ifname: str) -> ParentFacts:
        return self.parents.get(ifname) or ParentFacts(ifname=ifname, exists=False)
