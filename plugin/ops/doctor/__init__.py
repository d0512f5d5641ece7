"""``multinic doctor``: what is wrong with this host for multinic, and the exact fix. :mod:`.gather` reads
the host once into :class:`.facts.Facts`; the checks (:mod:`.host`, :mod:`.ipv6`, :mod:`.plugin`) are pure;
exit 0 when all pass, 1 with warnings, 2 with errors."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from . import host, ipv6, plugin
from .facts import ERROR, OK, SEVERITY, SKIP, WARN, Facts, ParentInfo, Proc, Result, RuleInfo, exit_code
from .host import (
    NETWORKD_DROPIN,
    NETWORKD_DROPIN_PATH,
    NM_DROPIN,
    NM_DROPIN_PATH,
    REPO_CONTRIB,
    check_br_netfilter,
    check_firewall,
    check_foreign_rules,
    check_forward,
    check_forward_drop,
    check_ip_forward,
    check_iptables_flavour,
    check_network_manager,
    check_networkd,
    check_parents,
    check_rp_filter,
)
from .plugin import (
    check_docker,
    check_ghosts,
    check_health,
    check_instances,
    check_managed_mounts,
    check_socket,
    check_state,
    check_swarm,
    health_loops,
)

CHECKS: tuple[Callable[[Facts], list[Result]], ...] = (
    plugin.check_state,
    plugin.check_managed_mounts,
    host.check_ip_forward,
    host.check_rp_filter,
    host.check_br_netfilter,
    host.check_firewall,
    host.check_forward,
    host.check_forward_drop,
    host.check_iptables_flavour,
    host.check_networkd,
    host.check_network_manager,
    host.check_parents,
    host.check_foreign_rules,
    ipv6.check_ipv6_forwarding,
    ipv6.check_accept_ra,
    ipv6.check_parents_ipv6,
    ipv6.check_ip6tables_flavour,
    plugin.check_docker,
    plugin.check_socket,
    plugin.check_ghosts,
    plugin.check_instances,
    plugin.check_swarm,
    plugin.check_health,
)

def run_checks(f: Facts) -> list[Result]:
    return [r for check in CHECKS for r in check(f)]

MARKS = {OK: "ok  ", WARN: "WARN", ERROR: "FAIL", SKIP: "skip"}

def render(results: list[Result]) -> str:
    lines = []
    for r in results:
        lines.append(f"[{MARKS[r.status]}] {r.check:17} {r.message}")
        if r.fix and r.status in (WARN, ERROR):
            for i, fix_line in enumerate(r.fix.splitlines()):
                lines.append(f"{'':24}{'fix: ' if i == 0 else '     '}{fix_line}")
    code = exit_code(results)
    counts = {s: sum(1 for r in results if r.status == s) for s in (OK, WARN, ERROR, SKIP)}
    lines.append(f"\n{counts[OK]} ok, {counts[WARN]} warning(s), {counts[ERROR]} error(s), {counts[SKIP]} skipped "
                 f"-> exit {code}")
    return "\n".join(lines)

def as_json(results: list[Result], facts: Facts | None = None) -> dict[str, Any]:
    return {
        "exit_code": exit_code(results),
        "checks": [dataclasses.asdict(r) for r in results],
        "state_dir": facts.state_dir if facts else None,
        "socket": facts.socket_path if facts else None,
    }


__all__ = [
    "CHECKS", "ERROR", "Facts", "NETWORKD_DROPIN", "NETWORKD_DROPIN_PATH", "NM_DROPIN", "NM_DROPIN_PATH", "OK",
    "ParentInfo", "Proc", "REPO_CONTRIB", "Result", "RuleInfo", "SEVERITY", "SKIP", "WARN", "as_json",
    "check_br_netfilter", "check_docker", "check_firewall", "check_foreign_rules", "check_forward",
    "check_forward_drop", "check_ghosts", "check_health",
    "check_instances", "check_ip_forward", "check_iptables_flavour", "check_managed_mounts",
    "check_network_manager", "check_networkd", "check_parents", "check_rp_filter", "check_socket", "check_state",
    "check_swarm",
    "exit_code", "health_loops", "host", "plugin", "render", "run_checks"
]
