"""The healer: keeps the kernel matching the state when others change it, and follows the parent NICs.

One loop on one kernel subscription (:class:`plugin.kernel.events.Listener`). A parent NIC that changed
(an address, its link, its MTU, a default route through it) is followed at once, once its burst of
events is over. Something of ours deleted, or the period passed: routes, rules and bridges (netlink),
then our chains (the firewall), compared with the state, looked at again a moment later, and the whole
host reconciled if the drift stays. Everything is re-applied every ``full_interval``; what dockerd no
longer has is forgotten every ``gc_interval``; a missing state is rebuilt as soon as dockerd answers.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from ..kernel import events, links, routes, writer
from ..kernel.netlink import Rtnl
from ..ops import engine, health, metrics
from ..plan.desired import difference
from ..plan.driver import Driver
from ..plan.state import State, StateLost
from .supervisor import STOP_POLL

log = logging.getLogger(__name__)

QUIET = 0.05  # events this close together are one burst, looked at once
FIREWALL_GAP = 2.0  # nf_tables deletions wake the firewall check at most this often
SETTLE = 1.0  # a verb in flight finishes well within this
DEBOUNCE = 0.15  # a parent's events come in bursts (address, routes, link): follow once it is over
BURST_MAX = 1.0
REFRESH = 5.0  # which NICs are parents is read again at least this often


def drift(state: State, counts: dict[str, int] | None = None) -> list[str]:
    """What the kernel lacks or has beyond the state in routes, rules and bridges (netlink dumps, no
    process, no lock); empty: in sync. ``counts`` gets the missing objects per kind (the repairs metric)."""
    counts = {} if counts is None else counts
    want = writer.desired(state)
    reasons = []
    with Rtnl() as rt:
        for kind, wanted, present in (("route", want.routes, routes.owned_routes(rt)),
                                      ("rule", want.rules, routes.owned_rules(rt))):
            missing, extra = difference(wanted, present)
            counts[kind] = len(missing)
            reasons += [f"{len(missing)} {kind}(s) missing"] * bool(missing)
            reasons += [f"{len(extra)} stale {kind}(s)"] * bool(extra)
        # A lookup per bridge, not a dump of every link (veths are the full pass's business).
        missing_bridges = [b.name for b in want.bridges if links.link_index(rt, b.name) is None]
    counts["bridge"] = len(missing_bridges)
    if missing_bridges:
        reasons.append(f"bridge(s) missing: {', '.join(missing_bridges)}")
    return reasons


class Healer:
    def __init__(self, driver: Driver, serving_since: float | None = None) -> None:
        """``serving_since``: when ``multinic serve`` started; networks created since are never "lost
        while we were down" (default: now)."""
        self.driver = driver
        self.serving_since = time.time() if serving_since is None else serving_since
        self.store = driver.store
        self.settings = driver.settings
        self.parents: dict[str, int | None] = {}  # parent name → its index, as last read
        self.links: dict[int, tuple] = {}  # index → Event.link_key of each parent, as last seen
        self.parents_read = 0.0
        self.state_seen: int | None = None
        self.pruned_at: float | None = 0.0  # None once networks dockerd lost while we were down are forgotten

    # -- parent NICs ------------------------------------------------------------------------------------
    def _read_parents(self) -> bool:
        """Which NICs are parents (again when the state file changed, or every REFRESH s); True if a known
        parent changed since last seen (its event may be one just read, or lost)."""
        try:
            stamp = self.store.path.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp == self.state_seen and time.monotonic() - self.parents_read < REFRESH:
            return False
        self.state_seen, self.parents_read = stamp, time.monotonic()
        state = self.store.load()
        with Rtnl() as rt:
            self.parents = {name: links.link_index(rt, name) for name in state.parent_names()}
            now = {}
            for index in filter(None, self.parents.values()):
                for msg in rt.get_links(index):
                    now[index] = (links.attr(msg, "IFLA_IFNAME"), links.attr(msg, "IFLA_MTU", 0),
                                  msg["flags"] & events.LINK_FLAGS)
        changed = any(i in self.links and now[i] != self.links[i] for i in now)
        self.links = now
        return changed

    def follow(self, listener: events.Listener, why: str) -> None:
        first = time.monotonic()
        listener.burst(DEBOUNCE, DEBOUNCE, BURST_MAX)  # until the burst is over (or a flapping link has had its second)
        changes = self.driver.follow_parents()
        log.info("parent NIC event (%s): reconciled in %.0f ms%s", why, (time.monotonic() - first) * 1000,
                 f" ({len(changes)} change(s))" if changes else "")
        self.parents_read = 0.0  # a re-created parent has a new index

    # -- the loop -----------------------------------------------------------------------------------------
    def run(self, stop: Any) -> None:
        listener = events.Listener()
        log.info("healer: watching the kernel for drift and the parent NICs for changes")
        last_full = last_gc = last_fw = time.monotonic()
        next_check, fw_due, first = last_full, False, True
        lost = ""  # the StateLost last logged
        try:
            while not stop.is_set():
                seen = [] if first else listener.burst(STOP_POLL, QUIET, STOP_POLL)  # a container's veth: one round
                first = False
                try:
                    if not self.store.exists():
                        self._missing_state()
                        continue
                    self._forget_lost_networks()
                    changed = self._read_parents()
                    woken = [e for e in seen or () if events.touches_parent(e, self.parents, self.links)]
                    if seen is None or woken or changed:
                        why = "the kernel dropped events" if seen is None else ", ".join(
                            sorted({e.describe() for e in woken})) or "a parent changed since last seen"
                        self.follow(listener, why)
                        health.note(True, repaired=True)
                        continue
                    kinds = events.drift(seen or ())
                    now = time.monotonic()
                    fw_due = fw_due or "firewall" in kinds
                    fw_now = (fw_due and now - last_fw >= FIREWALL_GAP) or (
                        now - last_fw > self.settings.firewall_check_interval)
                    gc_now = now - last_gc > self.settings.gc_interval
                    if not ("netlink" in kinds or fw_now or gc_now or now >= next_check):
                        continue
                    next_check = now + self.settings.check_interval
                    if fw_now:
                        last_fw, fw_due = now, False
                    if self._round(fw_now, time.monotonic() - last_full > self.settings.full_interval):
                        last_full = last_fw = time.monotonic()
                    if gc_now:
                        last_gc = time.monotonic()
                        self._collect_garbage()
                    health.passed()
                except StateLost as exc:
                    if str(exc) != lost:  # said once, and again when it changes (it names what to do)
                        lost = str(exc)
                        log.error("%s", exc)
                    health.note_state(self.store.directory, False, str(exc))
                    health.waiting(str(exc))
                except Exception as exc:  # noqa: BLE001 - keep healing; the next round may succeed
                    log.exception("healer round failed")
                    health.note(False, exc)
        finally:
            listener.close()

    def _round(self, firewall: bool, full: bool) -> bool:
        """One check; True if the whole host was reconciled."""
        state = self.store.load()
        if not state.networks:
            return False
        counts: dict[str, int] = {}
        reasons = drift(state, counts)
        if reasons:  # the repairs counted are those the second look confirms
            time.sleep(SETTLE)
            counts.clear()
            reasons = drift(self.store.load(), counts)
        if not reasons and firewall and self.firewall_drift(state):
            time.sleep(SETTLE)
            reasons = self.firewall_drift(self.store.load())
        if not (reasons or full):
            return False  # a round that finds nothing to do reports nothing: the heartbeat says it lives
        if reasons:
            log.warning("kernel drifted from the state (%s); reconciling", "; ".join(reasons))
        self.driver.reconcile()
        for kind, n in counts.items():
            metrics.repaired(kind, n if reasons else 0)
        health.note(True, repaired=bool(reasons))
        return True

    def firewall_drift(self, state: State) -> list[str]:
        """Our chains and jumps (or our nftables tables) in both families, compared with the state (one read
        each: a save, or a listing in-process; IPv6 only while an IPv6 network exists)."""
        want = writer.desired(state)
        reasons = self.driver.firewall.v4.drift(want.firewall)
        if state.has_ipv6():
            reasons += [f"IPv6 {r}" for r in self.driver.firewall.v6.drift(want.firewall6)]
        return reasons

    def _forget_lost_networks(self) -> None:
        """Once after start, as soon as dockerd answers: networks it no longer has are forgotten and the
        host reconciled (``multinic serve`` listens first: dockerd waits for its plugins at boot)."""
        if self.pruned_at is None or time.monotonic() < self.pruned_at:
            return
        self.pruned_at = time.monotonic() + self.settings.check_interval
        known = engine.network_ids(self.settings, timeout=3)
        if known is not None:
            self.pruned_at = None
            self.driver.reconcile(known, created_before=self.serving_since)

    def _collect_garbage(self) -> None:
        view = engine.endpoints_by_network(self.settings, timeout=5)
        if view is not None:
            self.driver.collect_garbage(view, time.time(), grace=self.settings.gc_grace)

    def _missing_state(self) -> None:
        """No state file: rebuild it from dockerd (or start empty) once dockerd answers."""
        bridges = writer.remains().bridges
        outcome = self.driver.resolve_missing_state(engine.rebuild_view(self.settings, bridges))
        if self.store.exists():
            log.warning("state: %s", outcome)
            health.note_state(self.store.directory, True, None, outcome)
            self.driver.reconcile()
            health.note(True, repaired=True)
        else:
            health.waiting(f"state: {outcome}")
            time.sleep(STOP_POLL)


def loop(driver: Driver, serving_since: float | None = None) -> Callable[[Any], None]:
    """The healer, as a thread of the worker hosting the loops."""
    return lambda stop: Healer(driver, serving_since).run(stop)
