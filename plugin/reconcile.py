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

Inside containers, the gateway watcher's policy routing (decided purely by :mod:`plugin.gateway`)
is written here too: :func:`reconcile_container`, :func:`remove_container`.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from pyroute2 import IPRoute

from . import netlink, ports
from .desired import MAIN_TABLE, Change, HostState, change, host_state, scope
from .facts import ParentFacts
from .firewall import FirewallBackend, Ruleset, get_backend
from .gateway import AF_INET, Attachment, Decision, Routing, choose, container_routing
from .state import State
from .tags import LINK_BRIDGE, LINK_GONE, LINK_VETH, RT_PROTO

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


# Deletions handed off by this process (``defer_deletes``) to one reaper thread, which starts on
# them at once, after the response: a verb never waits for them (a retired link has a tag no
# desired object has, and a veth re-created under the same name first deletes the retired one,
# :func:`netlink.ensure_veth`). A retired veth is visible for the ~20 ms its deletion takes.
_reap = threading.Condition()
_queue: list[int] = []  # ifindexes
_reaper: threading.Thread | None = None
_reaping = False


def _delete_later(indexes: list[int]) -> None:
    global _reaper
    if not indexes:
        return
    with _reap:
        _queue.extend(indexes)
        if _reaper is None or not _reaper.is_alive():
            _reaper = threading.Thread(target=_reap_loop, name="multinic-reaper", daemon=True)
            _reaper.start()
        _reap.notify_all()


def _reap_loop() -> None:
    global _reaping
    while True:
        with _reap:
            _reaping = False
            _reap.notify_all()
            while not _queue:
                _reap.wait()
            batch = list(_queue)
            _queue.clear()
            _reaping = True
        _delete_now(batch)


def _delete_now(indexes: list[int]) -> None:
    try:
        with IPRoute() as ipr:
            for index in indexes:
                netlink.delete_link_index(ipr, index)
    except Exception:  # noqa: BLE001 - retired links are the whole-host writer's to remove
        log.exception("deferred deletion of links %s failed; the healer removes them", indexes)


def wait_for_deletes() -> None:
    """Until this process's retired links are deleted (tests, a worker's clean exit)."""
    with _reap:
        batch = list(_queue)
        _queue.clear()
    if batch:
        _delete_now(batch)
    with _reap:
        while _reaping:
            _reap.wait(1.0)


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


# -- inside containers: the gateway watcher's policy routing ---------------------------------
# What to put there is decided purely in :mod:`plugin.gateway`; only this writes it.
class NotThatNetns(Exception):
    """The path does not lead to the container's netns (our own netns, or a recycled pid)."""


def _ns_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


@contextmanager
def open_netns(netns_path: str, expect: str | None = None) -> Iterator[Any]:
    """An IPRoute bound to the netns at ``netns_path`` (typically ``/proc/<pid>/ns/net``).

    Refuses this process's own netns (the host's, for a plugin running there): whatever goes
    wrong, the host's rules and routes are never touched. If ``expect`` (dockerd's SandboxKey)
    is readable it must be the same namespace, which catches a pid recycled since ``inspect``.
    Never creates a namespace (pyroute2's default would for a missing path).
    """
    from pyroute2 import NetNS

    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = _ns_id(os.fstat(fd))
        if target == _ns_id(os.stat("/proc/self/ns/net")):
            raise NotThatNetns(f"{netns_path} is this process's own network namespace")
        if expect:
            try:
                expected = _ns_id(os.stat(expect))
            except OSError:
                expected = None  # not visible from here (managed plugin without the mount)
            if expected is not None and expected != target:
                raise NotThatNetns(f"{netns_path} is not the namespace {expect}")
        with NetNS(fd, flags=0) as ipr:
            yield ipr
    finally:
        os.close(fd)


def netns_facts(ipr: Any) -> tuple[ipaddress.IPv4Address | None, dict[ipaddress.IPv4Address, str]]:
    """(dockerd's default gateway in the main table, {address: ifname}) of the netns ``ipr`` is in."""
    gateway = None
    for msg in ipr.route("dump", family=AF_INET):
        if (
            netlink._attr(msg, "RTA_TABLE", msg["table"]) == MAIN_TABLE
            and msg["dst_len"] == 0
            and msg["proto"] != RT_PROTO
            and netlink._attr(msg, "RTA_GATEWAY")
        ):
            gateway = ipaddress.IPv4Address(netlink._attr(msg, "RTA_GATEWAY"))
            break
    return gateway, {iface.ip: name for name, iface in netlink.all_ipv4_addresses(ipr)}


def _sync_container(ipr: Any, routing: Routing) -> bool:
    """Make our (proto 211) rules and routes in ``ipr``'s netns equal ``routing``; True if changed.

    Routes go in before the rules that use them and out after them; nothing without our
    protocol number is ever added to or removed from.
    """
    present_routes = netlink.owned_routes(ipr)
    present_rules = netlink.owned_rules(ipr)
    missing_routes = sorted(routing.routes - present_routes, key=repr)
    extra_routes = sorted(present_routes - routing.routes, key=repr)
    missing_rules = sorted(routing.rules - present_rules, key=repr)
    extra_rules = sorted(present_rules - routing.rules, key=repr)
    for route in missing_routes:
        netlink.replace_route(ipr, route)
    for rule in missing_rules:
        netlink.add_rule(ipr, rule)
    for rule in extra_rules:
        netlink.delete_rule(ipr, rule)
    for route in extra_routes:
        netlink.delete_route(ipr, route)
    return bool(missing_routes or extra_routes or missing_rules or extra_rules)


def apply_container(netns_path: str, routing: Routing, expect: str | None = None) -> bool:
    """Reconcile ``routing`` inside the netns at ``netns_path`` (idempotent); True if anything changed."""
    with open_netns(netns_path, expect) as ipr:
        return _sync_container(ipr, routing)


def remove_container(netns_path: str, expect: str | None = None) -> bool:
    """Remove every rule and route of ours from the netns at ``netns_path``; True if there were any."""
    return apply_container(netns_path, Routing(), expect)


def reconcile_container(
    netns_path: str, attachments: list[Attachment], expect: str | None = None
) -> tuple[Decision, Routing, dict[str, Any]]:
    """Read the netns, decide, apply — with one netlink socket. Returns what was decided and facts seen."""
    with open_netns(netns_path, expect) as ipr:
        docker_gw, ifname_by_ip = netns_facts(ipr)
        decision = choose(attachments, docker_gw)
        routing = container_routing(attachments, decision, ifname_by_ip)
        changed = _sync_container(ipr, routing)
    facts = {
        "docker_gateway": str(docker_gw) if docker_gw else None,
        "ifnames": {str(ip): name for ip, name in ifname_by_ip.items()},
        "changed": changed,
    }
    return decision, routing, facts
