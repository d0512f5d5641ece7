"""Re-apply what others delete: systemd-networkd and cloud NIC agents (ec2-net-utils) remove
rules and routes they do not own, and a NIC going down takes its routes with it.

A small loop beside the HTTP workers: every :data:`CHECK_INTERVAL` seconds it compares the
kernel's tagged routes, rules and links with the desired state (cheap netlink reads) and runs
the full reconcile (under the state lock) when they drift, and unconditionally every
:data:`FULL_INTERVAL` seconds, which also restores firewall rules.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from pyroute2 import IPRoute

from . import background, engine, health, metrics, netlink
from .background import BackgroundProcess
from .desired import host_state
from .driver import Driver
from .reconcile import gather_facts
from .state import State, Store

log = logging.getLogger(__name__)

CHECK_INTERVAL = 2.0
FULL_INTERVAL = 30.0
# Garbage collection of what dockerd forgot to tell us (env overrides exist for the tests).
GC_INTERVAL = float(os.environ.get("MULTINIC_GC_INTERVAL", "60"))
GC_GRACE = float(os.environ.get("MULTINIC_GC_GRACE", "120"))


def drift(state: State, counts: dict[str, int] | None = None) -> list[str]:
    """What the kernel lacks or has extra, compared with the state (empty list: in sync);
    ``counts`` gets the number of missing objects per kind (for the repairs metric)."""
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
        if missing := desired.rules - rules:
            reasons.append(f"{len(missing)} rule(s) missing")
        links = netlink.tagged_links(ipr)
        counts["bridge"] = sum(1 for b in desired.bridges if b.name not in links)
        if missing := [b.name for b in desired.bridges if b.name not in links]:
            reasons.append(f"bridge(s) missing: {', '.join(missing)}")
    return reasons


def run(store: Store, stop_event: Any) -> None:
    driver = Driver(store)
    last_full = last_gc = time.monotonic()
    while not stop_event.wait(CHECK_INTERVAL):
        try:
            state = store.load()
            if not state.networks:
                continue
            counts: dict[str, int] = {}
            reasons = drift(state, counts)
            if reasons or time.monotonic() - last_full > FULL_INTERVAL:
                if reasons:
                    log.warning("kernel drifted from state (%s); re-applying", "; ".join(reasons))
                driver.recover(None)
                for kind, n in counts.items():  # metrics hook (issue 15): after the repair succeeded
                    metrics.repaired(kind, n)
                last_full = time.monotonic()
                health.note(True, repaired=bool(reasons))
            if time.monotonic() - last_gc > GC_INTERVAL:
                last_gc = time.monotonic()
                view = engine.endpoints_by_network(timeout=5)
                if view is not None:
                    driver.collect_garbage(view, time.time(), grace=GC_GRACE)
        except Exception as exc:  # noqa: BLE001 - keep healing; the next round may succeed
            log.exception("healer round failed")
            health.note(False, exc)


def spawn(store: Store) -> BackgroundProcess:
    """Fork :func:`run` beside gunicorn; ``.stop()`` on the result when serving ends."""
    return background.spawn("healer", lambda stop: run(store, stop))
