"""Make the kernel match the persisted state, idempotently. The only writer of kernel state.

Every verb ends here, and so do plugin start and the watcher that re-applies what
systemd-networkd or a cloud NIC agent deleted. Whatever carries our tag but is not in the
desired state is removed, so a crash between "state saved" and "kernel changed" heals on
the next run.
"""

from __future__ import annotations

import functools
import logging

from pyroute2 import IPRoute

from . import netlink
from .desired import HostState, host_state
from .facts import ParentFacts
from .firewall import FirewallBackend, get_backend
from .state import State
from .tags import LINK_BRIDGE, LINK_VETH

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def firewall() -> FirewallBackend:
    """The backend for this host, detected once per process."""
    backend = get_backend()
    log.info("firewall backend: %s", backend.name)
    return backend


def gather_facts(ipr: IPRoute, state: State) -> dict[str, ParentFacts]:
    parents = {net.parent for net in state.networks.values() if net.parent}
    return {parent: netlink.parent_facts(ipr, parent) for parent in sorted(parents)}


def reconcile(state: State, backend: FirewallBackend | None = None) -> HostState:
    backend = backend or firewall()
    with IPRoute() as ipr:
        desired = host_state(state, gather_facts(ipr, state))
        for bridge in desired.bridges:
            netlink.ensure_bridge(ipr, bridge)
        for veth in desired.veths:
            netlink.ensure_veth(ipr, veth)
        netlink.sync(
            desired.routes,
            netlink.owned_routes(ipr),
            lambda r: netlink.replace_route(ipr, r),
            lambda r: netlink.delete_route(ipr, r),
        )
        netlink.sync(
            desired.rules,
            netlink.owned_rules(ipr),
            lambda r: netlink.add_rule(ipr, r),
            lambda r: netlink.delete_rule(ipr, r),
        )
        for path, value in desired.sysctls.items():
            netlink.write_sysctl(path, value)
        if desired.firewall.is_empty():
            backend.remove()
        else:
            backend.apply(desired.firewall)
        remove_stale_links(ipr, state)
    return desired


def remove_stale_links(ipr: IPRoute, state: State) -> None:
    for name, (kind, object_id, _index) in netlink.tagged_links(ipr).items():
        if kind == LINK_BRIDGE and object_id not in state.networks:
            log.info("removing stale bridge %s (network %s)", name, object_id[:12])
            netlink.delete_link(ipr, name)
        elif kind == LINK_VETH and object_id not in state.endpoints:
            log.info("removing stale veth %s (endpoint %s)", name, object_id[:12])
            netlink.delete_link(ipr, name)
