"""Kernel facts the desired state depends on but the plugin does not own (parent NIC addresses)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


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
