"""Re-apply what others delete: systemd-networkd and cloud NIC agents (ec2-net-utils) remove
rules and routes they do not own, a NIC going down takes its routes with it, someone flushes a
chain.

A small loop beside the HTTP workers. Checking that the host matches the state is its job, not
the request path's (a verb applies its own change and trusts the rest):

- every :data:`CHECK_INTERVAL` seconds, and at once when the kernel announces a deleted route or
  rule of ours or a deleted bridge of ours (:mod:`plugin.kevents`), it compares the kernel's
  tagged routes, rules and bridges with the desired state (netlink, no process, no lock; its
  cost follows the number of networks, not of containers);
- every :data:`FIREWALL_INTERVAL` seconds, and when nf_tables announces a deleted table, chain or
  rule (at most every :data:`FIREWALL_GAP` seconds), it compares our chains and jumps with the
  desired rules (one ``iptables-save``, no lock);
- on drift, and unconditionally every :data:`FULL_INTERVAL` seconds, it runs the whole-host writer
  (:meth:`plugin.driver.Driver.recover`, under the state lock), the same writer the verbs use.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Any

from pyroute2 import IPRoute

from . import background, engine, health, kevents, metrics, netlink
from .background import BackgroundProcess
from .desired import HostState, host_state
from .driver import Driver
from .firewall.model import CHAINS, JUMPS, TABLES, FirewallBackend
from .firewall.restore import RestoreBackend
from .reconcile import firewall, gather_facts
from .state import State, Store

log = logging.getLogger(__name__)

CHECK_INTERVAL = float(os.environ.get("MULTINIC_CHECK_INTERVAL", "2"))
WAKE = 0.5  # how often the loop looks at its stop flag
FIREWALL_GAP = 2.0
SETTLE = 1.0  # a verb in flight finishes well within this
FIREWALL_INTERVAL = float(os.environ.get("MULTINIC_FIREWALL_CHECK_INTERVAL", "15"))
FULL_INTERVAL = float(os.environ.get("MULTINIC_FULL_INTERVAL", "300"))
# Garbage collection of what dockerd forgot to tell us (env overrides exist for the tests).
GC_INTERVAL = float(os.environ.get("MULTINIC_GC_INTERVAL", "60"))
GC_GRACE = float(os.environ.get("MULTINIC_GC_GRACE", "120"))


def drift(state: State, counts: dict[str, int] | None = None) -> list[str]:
    """What the kernel lacks or has extra in routes, rules and links, compared with the state
    (empty list: in sync). Netlink dumps only. ``counts`` gets the number of missing objects per
    kind (for the repairs metric)."""
    counts = {} if counts is None else counts
    with IPRoute() as ipr:
        desired = host_state(state, gather_facts(ipr, state))
        reasons = []
        routes = netlink.owned_routes(ipr)
        rules = netlink.owned_rules(ipr)
        counts["route"] = len(desired.routes - routes)
        counts["rule"] = len(desired.rules - rules)
        if missing := desired.routes - routes:
            reasons.append(f"{len(missing)} route(s) missing")
        if extra := routes - desired.routes:
            reasons.append(f"{len(extra)} stale route(s)")
        if missing := desired.rules - rules:
            reasons.append(f"{len(missing)} rule(s) missing")
        if extra := rules - desired.rules:
            reasons.append(f"{len(extra)} stale rule(s)")
        # A lookup per bridge, not a dump of every link (a full host has a veth per container);
        # missing or stale veths are the periodic whole-host writer's business.
        missing_bridges = [b.name for b in desired.bridges if netlink.link_index(ipr, b.name) is None]
        counts["bridge"] = len(missing_bridges)
        if missing := missing_bridges:
            reasons.append(f"bridge(s) missing: {', '.join(missing)}")
    return reasons


def expected_firewall(desired: HostState) -> dict[str, Counter[str]]:
    """Per table, the ``iptables -S`` lines of our chains (as a multiset: the order between
    networks does not matter, see :mod:`plugin.firewall.rules`)."""
    out: dict[str, Counter[str]] = {}
    for table in TABLES:
        lines: Counter[str] = Counter()
        for chain in CHAINS[table]:
            lines[f"-N {chain}"] += 1
            for rule in desired.firewall.rules(table, chain):
                lines[RestoreBackend._line("-A", chain, rule)] += 1
        out[table] = lines
    return out


def firewall_drift(state: State, backend: FirewallBackend) -> list[str]:
    """Our chains' contents and the jumps into them, compared with the desired rules."""
    with IPRoute() as ipr:
        desired = host_state(state, gather_facts(ipr, state))
    dump = backend.dump()
    reasons = []
    expected = expected_firewall(desired)
    for table in TABLES:
        lines = dump.get(table, [])
        jumps = {(j.chain, j.target): j for j in JUMPS if j.table == table}
        ours = Counter(ln for ln in lines if not any(ln.startswith(f"-A {c} ") and ln.endswith(f"-j {t}")
                                                   and c not in CHAINS[table] for (c, t) in jumps))
        if ours != expected[table]:
            reasons.append(f"{table}: our chains differ from the state")
        for (chain, target), jump in jumps.items():
            count = sum(1 for ln in lines if ln.startswith(f"-A {chain} ") and ln.endswith(f"-j {target}"))
            if count > 1 or (count == 0 and not jump.optional):
                reasons.append(f"{table}: {count} jump(s) {chain} -> {target}")
    return reasons


def still(check: Any, store: Store) -> list[str]:
    """Drift seen without the lock may be a verb between "state saved" and "kernel changed":
    look again a moment later, on a fresh state, before paying for the whole-host writer."""
    time.sleep(SETTLE)
    return check(store.load())


def run(store: Store, stop_event: Any) -> None:
    driver = Driver(store)
    listener = kevents.Listener()
    last_full = last_gc = last_fw = time.monotonic()
    next_check = last_full + CHECK_INTERVAL
    fw_due = False
    try:
        while not stop_event.is_set():
            kinds = listener.wait(WAKE)
            now = time.monotonic()
            fw_due = fw_due or "firewall" in kinds
            fw_now = (fw_due and now - last_fw >= FIREWALL_GAP) or now - last_fw > FIREWALL_INTERVAL
            if not ("netlink" in kinds or fw_now or now >= next_check or now - last_gc > GC_INTERVAL):
                continue
            next_check = now + CHECK_INTERVAL
            try:
                state = store.load()
                if not state.networks:
                    fw_due = False
                    continue
                counts: dict[str, int] = {}
                reasons = drift(state, counts)
                if reasons:  # the repairs counted are those the second look confirms
                    counts.clear()
                    reasons = still(lambda s: drift(s, counts), store)  # noqa: B023 - called at once
                if not reasons and fw_now:
                    last_fw, fw_due = time.monotonic(), False
                    if firewall_drift(state, firewall()):
                        reasons = still(lambda s: firewall_drift(s, firewall()), store)
                if reasons or time.monotonic() - last_full > FULL_INTERVAL:
                    if reasons:
                        log.warning("kernel drifted from state (%s); re-applying", "; ".join(reasons))
                    driver.recover(None)
                    for kind, n in counts.items():  # metrics hook (issue 15): after the repair succeeded
                        metrics.repaired(kind, n if reasons else 0)
                    last_full = last_fw = time.monotonic()
                    health.note(True, repaired=bool(reasons))
                if time.monotonic() - last_gc > GC_INTERVAL:
                    last_gc = time.monotonic()
                    view = engine.endpoints_by_network(timeout=5)
                    if view is not None:
                        driver.collect_garbage(view, time.time(), grace=GC_GRACE)
            except Exception as exc:  # noqa: BLE001 - keep healing; the next round may succeed
                log.exception("healer round failed")
                health.note(False, exc)
    finally:
        listener.close()


def spawn(store: Store) -> BackgroundProcess:
    """Fork :func:`run` beside gunicorn; ``.stop()`` on the result when serving ends."""
    return background.spawn("healer", lambda stop: run(store, stop))
