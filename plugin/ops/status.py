"""``multinic status``: the plugin's health, its networks (with how each parent's next hop was chosen),
the ports it publishes (``docker ps`` cannot show them for a remote driver), each container's gateway
decision, and every kernel object it owns."""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import __version__
from ..settings import Settings


def collect(settings: Settings) -> dict[str, Any]:
    from ..api.messages import swarm_scoped
    from ..kernel import facts, links, routes
    from ..kernel.firewall import firewall_for, select
    from ..kernel.firewall.rules import publish_addresses
    from ..kernel.netlink import Rtnl
    from ..loops import decisions
    from ..plan.state import Store
    from . import engine, health

    store = Store(settings.state_dir)
    state = store.load()
    owners = engine.endpoint_owners(settings, timeout=3)
    info = engine.engine_info(settings, timeout=3)
    with Rtnl() as rt:
        tagged = links.tagged_links(rt)
        our_routes = sorted(routes.owned_routes(rt), key=repr)
        our_rules = sorted(routes.owned_rules(rt), key=repr)
        parents = facts.parents(rt, state.parent_names())
    ports = []
    for ep in sorted(state.endpoints.values(), key=lambda e: e.id):
        owner = owners.get(ep.id, {})
        net = state.networks.get(ep.network_id)
        for port in ep.ports:
            for where in publish_addresses(net, port.host_ip, parents) if net else (port.host_ip,):
                v6 = ":" in where
                inside = (ep.address6 if v6 else ep.address).split("/")[0]
                ports.append({
                    "container": owner.get("container", ""), "network": owner.get("network", ep.network_id[:12]),
                    "endpoint": ep.id[:12], "host": f"[{where}]:{port.host_port}" if v6 else
                    f"{where or '*'}:{port.host_port}",
                    "container_port": f"[{inside}]:{port.container_port}/{port.proto}" if v6 else
                    f"{inside}:{port.container_port}/{port.proto}",
                    "proto": port.proto,
                })
    chosen = health.firewall_in_use(store.directory)  # the serving plugin's choice, else what it would choose
    backend = firewall_for(chosen, settings) if chosen else select(settings)
    directory = str(store.directory)
    return {
        "health": health.report(directory, settings.health_stale),
        "state_file": str(store.path) if store.exists() else None,
        "gateway_watcher": decisions.load_watcher_info(directory),
        "gateways": gateway_rows(directory),
        "gateway_decisions": decisions.load(directory),
        "version": __version__,
        "engine": dataclasses.asdict(info) if info else None,
        "firewall": backend.name,
        "networks": [{**dataclasses.asdict(net), "bridge_present": net.bridge in tagged,
                      "scope": "swarm" if swarm_scoped(net.id) else "local"}
                     for net in sorted(state.networks.values(), key=lambda n: n.bridge)],
        "endpoints": [dataclasses.asdict(ep) for ep in state.endpoints.values()],
        "ports": ports,
        "kernel": {"links": sorted(tagged), "routes": [str(r) for r in our_routes],
                   "rules": [str(r) for r in our_rules], "firewall": backend.v4.dump(),
                   "firewall6": backend.v6.dump() if state.has_ipv6() else {}},
    }


def gateway_rows(state_dir: str) -> list[str]:
    """The GATEWAYS rows, one per container: chosen network, gateway, why."""
    from ..loops import decisions

    rows = []
    for cid, dec in sorted(decisions.load(state_dir).items(), key=lambda kv: kv[1].get("container", kv[0])):
        name = dec.get("container") or cid[:12]
        for family in filter(None, (dec, dec.get("ipv6"))):  # the IPv6 decision, if any, on a line of its own
            chosen = family.get("chosen") or "-"
            how = "override" if family.get("override") else "docker"
            via = f"via {family['gateway']} dev {family.get('interface') or '?'}" if family.get("gateway") \
                else "no default route"
            rows.append(f"{name:20} {chosen:16} {via:32} [{how}] {family.get('reason', '')}")
            name = "  (IPv6)"
    return rows


def render(status: dict[str, Any]) -> str:
    eng = status["engine"]
    out = [f"multinic {status['version']}  engine: "
           f"{eng['version'] + ' (API ' + eng['api_version'] + ')' if eng else 'not reachable'}  "
           f"firewall: {status['firewall']}"]
    hl = status["health"]
    out.append(f"health: {'healthy' if hl['healthy'] else 'UNHEALTHY'}")
    out += [f"  ! {problem}" for problem in hl["problems"]]
    rebuilt = (hl.get("state") or {}).get("rebuilt")
    if rebuilt:
        out.append(f"  state: {rebuilt}")
    for key, loop in sorted(hl["loops"].items()):
        out.append(f"  {key:8} {'alive' if loop['alive'] else 'DEAD'} pid={loop['pid']} last_run={loop['age']}s ago "
                   f"rounds={loop['rounds']} repairs={loop['repairs']} failures={loop['failures']} "
                   f"restarts={loop['restarts']} last_error={loop['last_error'] or '-'}")
    out.append("\nNETWORK       SCOPE  BRIDGE           SUBNET             PARENT   TABLE  MARK  GW_PRIO  MODE        "
               "NEXT HOP")
    for net in status["networks"]:
        mode = "internal" if net["internal"] else ("masquerade" if net["masquerade"] else "routed")
        rows = [(net[subnet], net[hop], net[source]) for subnet, hop, source in
                (("subnet", "parent_gateway", "gateway_source"), ("subnet6", "parent_gateway6", "gateway6_source"))
                if net[subnet]]
        for i, (subnet, hop, source) in enumerate(rows):  # a second line for a dual-stack network's IPv6
            via = f"{hop} ({source or '-'})" if hop else "-"
            if i:
                out.append(f"{'':13} {'':6} {'':16} {subnet:18} {'':8} {'':6} {'':5} {'':8} {'':11} {via}")
                continue
            out.append(f"{net['id'][:12]:13} {net.get('scope', 'local'):6} {net['bridge']:16} {subnet:18} "
                       f"{net['parent'] or '-':8} {net['table'] or '-'!s:6} {net['mark_slot'] or '-'!s:5} "
                       f"{net['gw_priority']:<8} {mode:11} {via}")
    if any(net.get("scope") == "swarm" for net in status["networks"]):
        out.append("(scope swarm: made on this node by swarm with its first task on it, removed with its last)")
    out.append("\nPUBLISHED PORTS (docker ps cannot show them for remote drivers)")
    out.append("CONTAINER            NETWORK          HOST                   -> CONTAINER")
    out += [f"{p['container']:20} {p['network']:16} {p['host']:22} -> {p['container_port']}" for p in status["ports"]]
    out.append("\nGATEWAYS (per container: the network carrying its default route, and why)")
    out += ["  " + row for row in status["gateways"]]
    return "\n".join(out)
