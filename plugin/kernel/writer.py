"""The one writer of the host's kernel state: :func:`reconcile` makes the kernel match a persisted state.

Given the state before a verb's change, it applies only the difference between the two desired
states over the verb's scope (:func:`plugin.plan.desired.scope`); should the kernel not hold what
the state says (someone deleted a rule or a link, a crash between two steps), the edit fails on an
object not there (or already there) and it falls back to the whole host, then forgets the flows the
change ends. Any other error is the host failing: raised as a :class:`~plugin.errors.Failure`. Without
a ``before`` it is the whole host: every tagged object not in the state is removed, our chains and
jumps are checked. The story is in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import errno
import logging
from typing import Callable, Iterable, Mapping

from pyroute2.netlink.exceptions import NetlinkError

from ..errors import Failure
from ..plan.desired import (
    Change,
    HostState,
    RouteSpec,
    RuleSpec,
    change,
    difference,
    host_state,
    needs_parent_facts,
    scope,
)
from ..plan.facts import ParentFacts
from ..plan.rebuild import KernelRemains
from ..plan.state import State
from . import conntrack, devconf, facts, links, reaper, routes
from .firewall import Firewall, FirewallBackend, Ruleset
from .netlink import Rtnl
from .tags import LINK_BRIDGE, LINK_GONE, LINK_VETH

log = logging.getLogger(__name__)


def reconcile(
    after: State,
    before: State | None,
    backend: Firewall,
    *,
    defer_deletes: bool = False,
    parents: Mapping[str, ParentFacts] | None = None,
) -> Change | None:
    """Make the kernel match ``after``. With ``before``, touch only what differs (the verb's change,
    returned); without, the whole host (returns None). ``defer_deletes``: veths that go are retired
    at once and deleted by :mod:`.reaper` after the response. ``parents``: facts the verb just read."""
    if before is None:
        _whole_host(after, backend)
        return None
    mine, theirs = scope(before, after)
    with Rtnl() as rt:
        if not needs_parent_facts(mine, theirs):
            parents = {}
        elif parents is None or not parents_of(mine, theirs) <= parents.keys():
            parents = facts.parents(rt, parents_of(mine, theirs))
        old, new = host_state(mine, parents), host_state(theirs, parents)
        todo = change(old, new)
        if todo.is_empty():
            return todo
        try:
            _apply(rt, todo, new, backend, lambda: host_state(after, facts.parents(rt, parents_of(after))),
                   defer_deletes)
        except Diverged as exc:
            log.warning("kernel did not hold what the state says (%s); reconciling the whole host", exc)
            try:
                _whole_host(after, backend)
            except Failure:
                raise
            except Exception as whole:  # noqa: BLE001 - as below: said as what failed, the trace chained
                raise Failure(f"kernel update failed: {whole}") from whole
            conntrack.forget(todo.flows_gone)
        except Failure:
            raise
        except Exception as exc:  # noqa: BLE001 - the host failed us: said as what failed, the trace chained
            raise Failure(f"kernel update failed: {exc}") from exc
    return todo


class Diverged(Exception):
    """An edit met an object not there (or already there): the kernel does not hold what ``before`` says."""


NOT_THERE = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EEXIST})


def _netlink_steps(steps: Callable[[], None]) -> None:
    """Run netlink steps of an edit; the kernel's "not there / already there" errors are :class:`Diverged`."""
    try:
        steps()
    except NetlinkError as exc:
        if exc.code in NOT_THERE:
            raise Diverged(str(exc)) from exc
        raise
    except OSError as exc:
        if exc.errno in NOT_THERE:
            raise Diverged(str(exc)) from exc
        raise


def parents_of(*states: State) -> set[str]:
    return set().union(*(state.parent_names() for state in states))


def remains(backend: Firewall | None = None) -> KernelRemains:
    """What of ours the kernel holds: bridges by network, our rules and routes, and (given the firewall
    backend) our published ports."""
    with Rtnl() as rt:
        bridges = {oid: name for name, (kind, oid, _i) in links.tagged_links(rt).items() if kind == LINK_BRIDGE}
        return KernelRemains(bridges=bridges, rules=frozenset(routes.owned_rules(rt)),
                             routes=frozenset(routes.owned_routes(rt)),
                             published=tuple(p for _family, fw in (backend.by_family() if backend else ())
                                             for p in fw.published()))


def desired(state: State) -> HostState:
    """The whole host's desired kernel state, over the parents as they are now."""
    with Rtnl() as rt:
        return host_state(state, facts.parents(rt, parents_of(state)))


def _apply(rt: Rtnl, todo: Change, new: HostState, backend: Firewall,
           whole: Callable[[], HostState], defer_deletes: bool) -> None:
    """The change, step by step. The netlink steps and the firewall's edit (which fails whole when a rule it
    deletes is not there) raise :class:`Diverged` when the kernel does not hold what ``before`` says; a
    whole-table firewall write reads the kernel first, and conntrack is asked, not told: their errors are
    the host's."""
    def links_and_routes() -> None:
        for bridge in todo.bridges:
            links.ensure_bridge(rt, bridge)
        for veth in todo.veths:
            links.ensure_veth(rt, veth)
        _routes_and_rules(rt, todo.routes_add, todo.routes_del, todo.rules_add, todo.rules_del)
        for path, value in todo.sysctls.items():
            devconf.write_sysctl(path, value)

    def links_gone() -> None:
        if defer_deletes and todo.veths_gone:
            reaper.delete_later([i for name in todo.veths_gone if (i := links.retire_link(rt, name)) is not None])
        else:
            for name in todo.veths_gone:
                links.delete_link(rt, name)
        for name in todo.bridges_gone:
            links.delete_link(rt, name)

    _netlink_steps(links_and_routes)
    for edits, ruleset, fw in ((todo.firewall, new.firewall, backend.v4), (todo.firewall6, new.firewall6, backend.v6)):
        if edits is None:  # first network made, or last one gone: the scope is the whole host
            _firewall_whole(ruleset, fw)
    # The rest, both families at once (the native backend: one transaction for both tables).
    try:
        backend.edit(todo.firewall or (), lambda: whole().firewall, todo.firewall6 or (), lambda: whole().firewall6)
    except Failure as exc:
        raise Diverged(f"firewall: {exc}") from exc
    _netlink_steps(links_gone)
    conntrack.forget(todo.flows_gone)


def _routes_and_rules(rt: Rtnl, routes_add: Iterable[RouteSpec], routes_del: Iterable[RouteSpec],
                      rules_add: Iterable[RuleSpec], rules_del: Iterable[RuleSpec]) -> None:
    """The host's routes and rules: stale routes out, missing ones in; then the same for rules. While a
    table's routes are swapped, its fail-closed route keeps its traffic from falling through to main; a
    container's netns has no such route, so :func:`.netns.apply` adds before it removes."""
    for route in routes_del:
        routes.delete_route(rt, route)
    for route in routes_add:
        routes.replace_route(rt, route)
    for rule in rules_del:
        routes.delete_rule(rt, rule)
    for rule in rules_add:
        routes.add_rule(rt, rule)


def _firewall_whole(ruleset: Ruleset, backend: FirewallBackend) -> None:
    if ruleset.is_empty():
        backend.remove()
    else:
        backend.apply(ruleset)


def _whole_host(state: State, backend: Firewall) -> None:
    with Rtnl() as rt:
        want = host_state(state, facts.parents(rt, parents_of(state)))
        for bridge in want.bridges:
            links.ensure_bridge(rt, bridge)
        for veth in want.veths:
            links.ensure_veth(rt, veth)
        _routes_and_rules(rt, *difference(want.routes, routes.owned_routes(rt)),
                          *difference(want.rules, routes.owned_rules(rt)))
        for path, value in want.sysctls.items():
            devconf.write_sysctl(path, value)
        # Each family's firewall is written even if the other's fails, and stale links go whatever the
        # firewall said (uninstall removes all it can): the first firewall error is raised at the end.
        failed: list[Exception] = []
        for ruleset, fw in ((want.firewall, backend.v4), (want.firewall6, backend.v6)):
            try:
                _firewall_whole(ruleset, fw)
            except Exception as exc:  # noqa: BLE001 - raised below, once the rest is done
                failed.append(exc)
        for name, (kind, object_id, _index) in links.tagged_links(rt).items():
            stale = (kind == LINK_BRIDGE and object_id not in state.networks) or (
                kind == LINK_VETH and object_id not in state.endpoints) or kind == LINK_GONE
            if stale:
                log.info("removing %s %s (%s %s no longer in the state)", kind, name, kind, object_id[:12])
                links.delete_link(rt, name)
        if failed:
            raise failed[0]
