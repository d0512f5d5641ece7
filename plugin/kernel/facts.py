"""What planning needs to know about the host, read from the kernel in as few dumps as the verb needs."""

from __future__ import annotations

import socket
from typing import Iterable

from ..plan.facts import HostFacts, ParentFacts
from .devconf import read_sysctl
from .links import attr, foreign_ipv6_bridges, link_index, link_names, parent_facts
from .netlink import Rtnl
from .routes import default_gateways, ra_defaults, tables_in_use


def read(
    rt: Rtnl, parents: Iterable[str], *, names: Iterable[str] = (), routing: bool = False, addresses: bool = False,
    ipv6: bool = False,
) -> HostFacts:
    """The given parents (a lookup each); which of ``names`` exist as links (a lookup each); with
    ``routing`` the tables in use and the default gateways of others (route and rule dumps: the first
    network on a parent only); with ``addresses`` every local address (one dump); with ``ipv6`` the
    host's IPv6 settings (an IPv6 network being planned)."""
    local = frozenset(str(attr(m, "IFA_ADDRESS")) for m in rt.get_addr()) if addresses else frozenset()
    accept_ra: dict[str, int] = {}
    if ipv6:
        for name in link_names(rt).values():
            value = read_sysctl(f"net/ipv6/conf/{name}/accept_ra")
            if value is not None and value.lstrip("-").isdigit():
                accept_ra[name] = int(value)
    return HostFacts(
        parents={name: parent_facts(rt, name) for name in sorted(set(parents))},
        links=frozenset(name for name in set(names) if link_index(rt, name) is not None),
        tables_in_use=frozenset(tables_in_use(rt)) if routing else frozenset(),
        default_gateways=default_gateways(rt) if routing else {},
        default_gateways6=default_gateways(rt, socket.AF_INET6) if routing else {},
        local_addresses=local,
        accept_ra=accept_ra,
        ra_default=frozenset(ra_defaults(rt)) if ipv6 else frozenset(),
        forwarding6=read_sysctl("net/ipv6/conf/all/forwarding") if ipv6 else None,
        foreign_ipv6_bridges=foreign_ipv6_bridges(rt) if ipv6 else frozenset(),
    )


def parents(rt: Rtnl, names: Iterable[str]) -> dict[str, ParentFacts]:
    """The parents' facts (addresses, MTU, up) a desired state depends on."""
    return {name: parent_facts(rt, name) for name in sorted(set(names))}
