"""What planning needs to know about the host, read from the kernel in as few dumps as the verb needs."""

from __future__ import annotations

import socket
from typing import Iterable

from pyroute2 import IPRoute

from ..plan.facts import HostFacts, ParentFacts
from .links import attr, link_index, parent_facts
from .routes import default_gateways, tables_in_use


def read(
    ipr: IPRoute, parents: Iterable[str], *, names: Iterable[str] = (), routing: bool = False, addresses: bool = False
) -> HostFacts:
    """The given parents (a lookup each); which of ``names`` exist as links (a lookup each); with
    ``routing`` the tables in use and the default gateways of others (a route and a rule dump: the
    first network on a parent only); with ``addresses`` every local IPv4 address (one dump)."""
    local = frozenset(str(attr(m, "IFA_ADDRESS")) for m in ipr.get_addr(family=socket.AF_INET)) if addresses \
        else frozenset()
    return HostFacts(
        parents={name: parent_facts(ipr, name) for name in sorted(set(parents))},
        links=frozenset(name for name in set(names) if link_index(ipr, name) is not None),
        tables_in_use=frozenset(tables_in_use(ipr)) if routing else frozenset(),
        default_gateways=default_gateways(ipr) if routing else {},
        local_addresses=local,
    )


def parents(ipr: IPRoute, names: Iterable[str]) -> dict[str, ParentFacts]:
    """The parents' facts (addresses, MTU, up) a desired state depends on."""
    return {name: parent_facts(ipr, name) for name in sorted(set(names))}
