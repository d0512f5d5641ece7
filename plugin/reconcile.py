"""The one writer of host kernel state: make the kernel match the desired state.

Two entry points, one code path for each kind of object:

- :func:`apply_change` — the request path. A verb passes the persisted state before and after
  its change; the writer computes both desired states over the same facts, takes their
  difference (:func:`plugin.desired.change`, pure) and applies only that: a container without
  published ports touches no route, rule or firewall chain and spawns no process; a Join with
  ports is one ``iptables-restore --noflush`` holding that endpoint's rules only. Should the
  kernel not hold what the state says it holds (someone deleted a rule, a crash happened
  between two steps), the kernel refuses the edit (a ``-D`` of a missing rule fails the whole
  transaction) or a netlink call fails, and the writer falls back to :func:`reconcile`.
- :func:`reconcile` — the whole host: plugin start, the healer (periodic, and when it sees
  drift), the fallback above. Every link, route, rule and chain carrying our tag but not in
  the desired state is removed, our chains and jumps are checked and re-created, so a crash
  between "state saved" and "kernel changed" heals on the next run.

The rp_filter restore and the conntrack flush of unpublished ports are desired state too
(:class:`plugin.desired.HostState` ``sysctls`` and ``flows``), applied by the same writer.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Callable, Mapping

from pyroute2 import IPRoute

from . import netlink, ports
from .desired import Change, HostState, change, host_state, scope
from .facts import ParentFacts
from .firewall import FirewallBackend, Ruleset, get_backend
from .state import State
from .tags import LINK_BRIDGE, LINK_GONE, LINK_VETH

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def firewall() -> FirewallBackend:
    """The backend for this host, detected once per process."""
    backend = get_backend()
    log.info("firewall backend: %s", backend.name)
    return backend


def parents_of(*states: State) -> set[str]:
    return {net.parent for state in states for net in state.networks.values() if net.parent}


def gather_facts(ipr: IPRoute, *states: State) -> dict[str, ParentFacts]:
    """The parents' facts (addresses, MTU, up) the desired state of ``states`` depends on."""
    return dict(netlink.host_facts(ipr, parents_of(*states)).parents)


def apply_change(
    before: State,
    after: State,
    backend: FirewallBackend | None = None,
    *,
    defer_deletes: bool = False,
    facts: Mapping[str, ParentFacts] | None = None,
) -> Change:
    """Make the kernel go from ``before``'s desired state to ``after``'s, touching only what differs.

    Both desired states are computed over the verb's scope only (:func:`plugin.desired.scope`):
    the endpoints it touched and their networks, so a verb's cost does not grow with the
    containers already on the host. ``defer_deletes``: veths that go are retired (re-tagged)
    at once and deleted by a thread after the response (the kernel's veth deletion waits for
    an RCU grace period, ~20 ms); a crash in between leaves a tagged link the whole-host path
    removes. ``facts``: the parents as the verb read them, if it did (a Join with ports)."""
    mine, theirs = scope(before, after)
    with IPRoute() as ipr:
        if not _needs_facts(mine, theirs):
            facts = {}
        elif facts is None or not parents_of(mine, theirs) <= facts.keys():
            facts = gather_facts(ipr, mine, theirs)
        old, new = host_state(mine, facts), host_state(theirs, facts)
        todo = change(old, new)
        if todo.is_empty():
            return todo
        try:
            _apply(ipr, todo, new, backend, lambda: host_state(after, gather_facts(ipr, after)).firewall,
                   defer_deletes)
        except Exception as exc:  # noqa: BLE001 - the full writer decides; its error is the one raised
            log.warning("kernel did not match the saved state (%s); re-applying the whole host", exc)
            reconcile(after, backend)
    return todo


def _needs_facts(before: State, after: State) -> bool:
    """Parent facts only shape routes and published ports: a verb that changes neither a
    network nor an endpoint with ports gets the same difference without reading them (both
    sides are computed over the same, empty, facts)."""
    if before.networks != after.networks:
        return True
    for eid in before.endpoints.keys() | after.endpoints.keys():
        old, new = before.endpoints.get(eid), after.endpoints.get(eid)
        if old != new and ((old is not None and old.ports) or (new is not None and new.ports)):
            return True
    return False


def _apply(
    ipr: IPRoute,
    todo: Change,
    new: HostState,
    backend: FirewallBackend | None,
    full_firewall: Callable[[], Ruleset],
    defer_deletes: bool,
) -> None:
    for bridge in todo.bridges:
        netlink.ensure_bridge(ipr, bridge)
    for veth in todo.veths:
        netlink.ensure_veth(ipr, veth)
    for route in todo.routes_del:
        netlink.delete_route(ipr, route)
    for route in todo.routes_add:
        netlink.replace_route(ipr, route)
    for rule in todo.rules_del:
        netlink.delete_rule(ipr, rule)
    for rule in todo.rules_add:
        netlink.add_rule(ipr, rule)
    for path, value in todo.sysctls.items():
        netlink.write_sysctl(path, value)
    if todo.firewall is None:
        # One side has no rules at all (first network made, last one gone): the scope then
        # holds every network, so ``new`` is the whole host's firewall.
        _firewall_full(new, backend or firewall())
    elif todo.firewall:
        (backend or firewall()).edit(todo.firewall, full_firewall)
    if defer_deletes and todo.veths_gone:
        retired = [i for i in (netlink.retire_link(ipr, name) for name in todo.veths_gone) if i is not None]
        _delete_later(retired)
    else:
        for name in todo.veths_gone:
            netlink.delete_link(ipr, name)
    for name in todo.bridges_gone:
        netlink.delete_link(ipr, name)
    ports.forget_flows(todo.flows_gone)


# Deletions handed to a thread by this process (``defer_deletes``). A verb does not wait for
# them: a retired link has a tag no desired object has, and a veth re-created under the same
# name first deletes the retired one (:func:`plugin.netlink.ensure_veth`).
_pending: list[threading.Thread] = []


def _delete_later(indexes: list[int]) -> None:
    if not indexes:
        return

    def run() -> None:
        try:
            with IPRoute() as ipr:
                for index in indexes:
                    netlink.delete_link_index(ipr, index)
        except Exception:  # noqa: BLE001 - retired links are the whole-host writer's to remove
            log.exception("deferred deletion of links %s failed; the healer removes them", indexes)

    thread = threading.Thread(target=run, name="multinic-delete", daemon=True)
    thread.start()
    _pending[:] = [t for t in _pending if t.is_alive()] + [thread]


def wait_for_deletes() -> None:
    """Until this process's deferred deletions are done (tests, and a clean shutdown)."""
    while _pending:
        _pending.pop().join()


def _firewall_full(desired: HostState, backend: FirewallBackend) -> None:
    if desired.firewall.is_empty():
        backend.remove()
    else:
        backend.apply(desired.firewall)


def reconcile(state: State, backend: FirewallBackend | None = None) -> HostState:
    """The whole host: every tagged object made to match ``state`` (chains and jumps checked)."""
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
        _firewall_full(desired, backend)
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
        elif kind == LINK_GONE:
            log.info("removing retired veth %s (endpoint %s)", name, object_id[:12])
            netlink.delete_link(ipr, name)
