"""Pure checks of the host's kernel and firewall for multinic: forwarding, reverse-path filtering,
br_netfilter, the order of FORWARD and DOCKER-USER, the iptables flavour, systemd-networkd and
NetworkManager, the parents and their next hops, and other tools' rules on multinic's priorities,
tables and marks."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from ...kernel.firewall.model import DOCKER_USER, FILTER_ACCEPT, FILTER_FORWARD, JUMPS
from ...kernel.firewall.native import TABLE
from ...kernel.firewall.view import View
from ...kernel.tags import (
    CHAIN_PREFIX,
    COMMENT,
    MARK_MASK,
    RT_PROTO,
    RULE_PREF_FWMARK,
    RULE_PREF_SOURCE,
    TABLE_ALLOC_FIRST,
    TABLE_ALLOC_LAST,
)
from .facts import ERROR, FLAVOURS, OK, SKIP, WARN, Facts, ParentInfo, Result

REPO_CONTRIB = Path(__file__).resolve().parents[3] / "contrib"
NETWORKD_DROPIN_PATH = "/etc/systemd/networkd.conf.d/multinic.conf"

NETWORKD_DROPIN = (
    "# multinic: networkd must leave alone the policy rules and routes it did not create\n"
    "# (systemd #19106, #22077). Installed by `multinic doctor`'s advice.\n"
    "[Network]\n"
    "ManageForeignRoutingPolicyRules=no\n"
    "ManageForeignRoutes=no\n"
)

NM_DROPIN_PATH = "/etc/NetworkManager/conf.d/multinic.conf"

NM_DROPIN = (
    "# multinic: its bridges and veths are not NetworkManager's to configure\n"
    "[keyfile]\n"
    "unmanaged-devices=interface-name:mn-*;interface-name:mnh*\n"
)


def _parents(f: Facts) -> list[ParentInfo]:
    return [f.parents[name] for name in sorted(f.parents)]

def docker_on_nftables(f: Facts) -> bool:
    """Docker's firewall is its nftables backend (Engine 29): its tables, or what `docker info` says."""
    return f.docker_firewall == "nftables" or f.docker_firewall_backend == "nftables"


def check_ip_forward(f: Facts) -> list[Result]:
    if f.ip_forward == "1":
        return [Result("ip_forward", OK, "net.ipv4.ip_forward=1")]
    why = " (Docker's nftables backend does not turn it on: that is the host's to set)" if docker_on_nftables(f) else ""
    return [
        Result(
            "ip_forward",
            ERROR,
            f"net.ipv4.ip_forward={f.ip_forward}: the host routes nothing between the parents and the bridges{why}",
            "sysctl -w net.ipv4.ip_forward=1 && echo net.ipv4.ip_forward=1 > /etc/sysctl.d/60-multinic.conf",
        )
    ]

def check_rp_filter(f: Facts) -> list[Result]:
    if not f.parents:
        return [Result("rp_filter", SKIP, "no parent NIC in use (give --parent IFNAME to check one)")]
    out = []
    for p in _parents(f):
        if not p.exists:
            continue
        values = [int(v) for v in (f.rp_filter_all, p.rp_filter) if v is not None and v.isdigit()]
        effective = max(values, default=0)  # the kernel uses max(all, dev)
        if effective == 1:
            where = "all" if f.rp_filter_all == "1" else p.name
            fix = f"sysctl -w net.ipv4.conf.{p.name}.rp_filter=2"
            if f.rp_filter_all == "1":
                fix += " net.ipv4.conf.all.rp_filter=2"
            out.append(
                Result(
                    "rp_filter",
                    ERROR,
                    f"{p.name}: strict reverse-path filter (net.ipv4.conf.{where}.rp_filter=1): packets to the "
                    f"containers arrive on {p.name} but the main table routes their source elsewhere, so the "
                    "kernel drops them",
                    fix + f"; persist it in /etc/sysctl.d/60-multinic.conf (net.ipv4.conf.{p.name}.rp_filter=2)",
                )
            )
        else:
            out.append(Result("rp_filter", OK, f"{p.name}: rp_filter={effective} (0 or 2 let replies through)"))
    return out

def _bridges(f: Facts) -> list[str]:
    return sorted(n.bridge for n in f.state.networks.values())

def check_br_netfilter(f: Facts) -> list[Result]:
    if not f.br_netfilter_loaded:
        return [
            Result(
                "br_netfilter",
                WARN,
                "br_netfilter is not loaded: a container reaching a port published by a container on its own "
                "multinic network (hairpin through the host address) gets no reply",
                "modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1 && "
                "echo br_netfilter > /etc/modules-load.d/multinic.conf",
            )
        ]
    if f.bridge_nf_call_iptables != "1":
        return [
            Result(
                "br_netfilter",
                WARN,
                f"net.bridge.bridge-nf-call-iptables={f.bridge_nf_call_iptables}: bridged frames skip iptables, "
                "so same-network hairpin to published ports gets no reply",
                "sysctl -w net.bridge.bridge-nf-call-iptables=1",
            )
        ]
    view = _our_view(f)
    # The same-bridge accept sits in MULTINIC-ACCEPT (entered first from MULTINIC-FORWARD); in the native
    # table each rule carries its iptables text as comment.
    accepted = {r for chain in (FILTER_FORWARD, FILTER_ACCEPT) for r in (view.chain_rules("filter", chain) if view
                                                                      else [])}
    accepted |= set(f.native_rules.get(FILTER_ACCEPT, ()))
    missing = [b for b in _bridges(f) if f"-i {b} -o {b} -j ACCEPT" not in accepted]
    if missing:
        return [
            Result(
                "br_netfilter",
                ERROR,
                "bridge-nf-call-iptables=1 sends frames between two containers of one network through FORWARD, "
                f"but multinic's FORWARD chains do not accept them for {', '.join(missing)}: they talk to nobody",
                "multinic reconcile   (or restart the plugin: it re-applies its FORWARD rules)",
            )
        ]
    return [Result("br_netfilter", OK, "loaded, bridge-nf-call-iptables=1, same-bridge traffic accepted")]

def _views(f: Facts, family: int = 4) -> dict[str, View]:
    return f.iptables if family == 4 else f.ip6tables

def _docker_flavours(f: Facts, family: int = 4) -> list[str]:
    return [fl for fl in FLAVOURS if fl in _views(f, family) and _views(f, family)[fl].has_docker]

def _our_flavours(f: Facts, family: int = 4) -> list[str]:
    return [fl for fl in FLAVOURS if fl in _views(f, family) and _views(f, family)[fl].has_ours]

def _our_flavour(f: Facts, family: int = 4) -> str | None:
    """The flavour whose FORWARD matters: where our chains are, else where Docker's are."""
    return next(iter(_our_flavours(f, family) or _docker_flavours(f, family)), None)

def _our_view(f: Facts) -> View | None:
    flavour = _our_flavour(f)
    return f.iptables[flavour] if flavour else None

def _target(rule: str) -> str | None:
    m = re.search(r"(?:^|\s)-j\s+(\S+)", rule)
    return m.group(1) if m else None

def check_forward(f: Facts) -> list[Result]:
    """How FORWARD enters multinic's chain, as Docker orders its own: through DOCKER-USER, after the
    user's rules there (so a DROP of the user's holds for multinic's ports too), or, without DOCKER-USER,
    first in FORWARD. In iptables, and in ip6tables while an IPv6 network exists."""
    results = _check_forward(f, 4)
    if f.state.has_ipv6():
        results += _check_forward(f, 6)
    return results

def _check_forward(f: Facts, family: int) -> list[Result]:
    name, tool, table = ("forward", "iptables", "ip") if family == 4 else ("forward6", "ip6tables", "ip6")
    flavour = _our_flavour(f, family)
    if flavour is None and f.firewall_selected == "nftables":
        return [Result(name, OK, f"no {tool} FORWARD to enter: multinic's table {table} {TABLE} hooks forward "
                       f"itself, and Docker keeps no {tool} chains here")]
    if flavour is None:
        return [Result(name, SKIP, f"no {tool} view (neither Docker's nor multinic's chains found)")]
    view = _views(f, family)[flavour]
    policy = view.policies.get("filter", {}).get("FORWARD", "ACCEPT")
    if not f.state.networks:
        return [Result(name, OK, f"FORWARD policy {policy}; no multinic network, so no jump expected")]
    chains = view.chains("filter")
    fix = "multinic reconcile   (the healer also puts it right within its firewall check interval, 15 s)"
    jumps = [j for j in JUMPS if j.table == "filter" and j.target == FILTER_FORWARD]
    wrong = [j for j in jumps if j.placement(chains)]
    if DOCKER_USER in chains:
        rules = chains[DOCKER_USER]
        user = [r for r in rules if not any(j.enters(r) for j in jumps) and r != "-j RETURN"]
        if wrong:
            ours = [n for n, r in enumerate(rules, 1) if any(j.enters(r) for j in jumps)]
            where = f"rule {ours[0]} of {len(rules)}" if ours else "missing"
            return [Result(name, ERROR, f"multinic's jump in {tool} {DOCKER_USER} is {where}: it must come after "
                           f"your {len(user)} rule(s) there (and FORWARD must not jump to it directly), or a DROP "
                           f"you put in {DOCKER_USER} does not hold for multinic's published ports", fix)]
        return [Result(name, OK, f"{tool} FORWARD policy {policy}; FORWARD enters multinic through {DOCKER_USER}, "
                       f"after your {len(user)} rule(s) there")]
    if wrong:
        return [Result(name, ERROR, f"{tool} FORWARD policy {policy} and no jump to {FILTER_FORWARD} (comment "
                       f"{COMMENT!r}): multinic's networks are not forwarded (or not isolated)", fix)]
    rules = chains.get("FORWARD", [])
    ours = next((n for n, r in enumerate(rules, 1) if any(j.enters(r) for j in jumps)), 1)
    command = f"{tool}-{flavour}"
    jump = f"FORWARD -m comment --comment {COMMENT} -j {FILTER_FORWARD}"
    move = f"{command} -D {jump} && {command} -I {jump.replace('FORWARD', 'FORWARD 1', 1)}"
    before = rules[: ours - 1]
    docker = [r for r in before if (_target(r) or "").startswith("DOCKER") or re.search(r"-[io] (docker0|br-)", r)]
    if docker:
        return [Result(name, ERROR, f"{tool} FORWARD rule {rules.index(docker[0]) + 1} ({docker[0]}) comes before "
                       f"multinic's jump (rule {ours}): Docker's accepts now bypass multinic's isolation", move)]
    if before:
        return [Result(name, WARN, f"{tool} FORWARD rules of another tool run before multinic's jump (rule "
                       f"{ours}): " + "; ".join(before[:3]), move + "; or move that tool's rules below it")]
    return [Result(name, OK, f"{tool} FORWARD policy {policy}; multinic's jump comes first (no {DOCKER_USER} "
                   "here)")]


def check_iptables_flavour(f: Facts) -> list[Result]:
    docker, ours = _docker_flavours(f), _our_flavours(f)
    name = "iptables_flavour"
    if not docker and docker_on_nftables(f):
        where = f"; multinic's chains are in iptables-{'/'.join(ours)}" if ours else ""
        return [Result(name, WARN if ours else OK, "Docker's firewall is nftables: no iptables flavour to follow"
                       + where, "MULTINIC_FIREWALL=nftables (or unset), restart the plugin" if ours else "")]
    if not docker:
        return [Result(name, WARN if f.state.networks else OK,
                       "Docker's chains are in no iptables flavour (dockerd not running, or --iptables=false)",
                       "start dockerd with its default --iptables=true" if f.state.networks else "")]
    if len(docker) > 1:
        return [Result(name, WARN, "Docker's chains exist in both nft and legacy tables (a switched "
                       "alternative left old rules): the kernel runs both", "iptables-legacy-save / iptables-nft-save "
                       "show both; flush the flavour dockerd no longer uses, then restart dockerd")]
    wrong = [fl for fl in ours if fl not in docker]
    setting = (
        f"MULTINIC_FIREWALL={docker[0]} (service environment) or `docker plugin set <plugin> "
        f"MULTINIC_FIREWALL={docker[0]}`"
    )
    if wrong:
        return [
            Result(
                name,
                ERROR,
                f"Docker uses iptables-{docker[0]}, multinic's chains are in iptables-{'/'.join(wrong)}: rules "
                "in the other flavour never open Docker's FORWARD DROP path",
                f"{setting}, restart the plugin, then remove the stale chains with iptables-{wrong[0]}-save | "
                f"grep -v {CHAIN_PREFIX} | iptables-{wrong[0]}-restore",
            )
        ]
    forced = {"iptables-nft": "nft", "legacy-restore": "legacy", "nftables": ""}.get(f.firewall_forced,
                                                                                   f.firewall_forced)
    if forced and forced != docker[0]:
        return [Result(name, ERROR, f"MULTINIC_FIREWALL={f.firewall_forced} but Docker uses iptables-{docker[0]}",
                       setting)]
    where = "multinic's chains are there too" if ours else "multinic has no chains yet"
    return [Result(name, OK, f"Docker uses iptables-{docker[0]}; {where}")]

def _backends(f: Facts) -> tuple[str, str]:
    """(Docker's firewall backend, multinic's), as doctor shows them."""
    docker_tables = [t for t in f.nft_tables if t.endswith(" docker-bridges")]
    if docker_on_nftables(f):
        docker = "nftables" + (f" (tables {', '.join(docker_tables)})" if docker_tables else "")
    elif f.docker_firewall:
        docker = f"iptables (iptables-{f.docker_firewall})"
    else:
        docker = f"{f.docker_firewall_backend or 'not found'} (no chains or tables of Docker's in the kernel)"
    ours_tables = [t for t in f.nft_tables if t.split()[-1] == TABLE]
    if f.firewall_selected == "nftables":
        opened = [fl for fl in _our_flavours(f)]
        ours = "nftables, in-process" + (f" (tables {', '.join(ours_tables)})" if ours_tables else "") + (
            f"; Docker's iptables FORWARD DROP opened from iptables-{'/'.join(opened)}" if opened else "")
    else:
        ours = {"nft": "iptables-nft", "legacy": "legacy (python-iptables)",
                "legacy-restore": "legacy (iptables-legacy-restore)"}.get(f.firewall_selected, "none")
    return docker, ours


def check_firewall(f: Facts) -> list[Result]:
    """Docker's firewall backend and multinic's, side by side; the native one where it cannot load."""
    name = "firewall"
    docker, ours = _backends(f)
    if f.firewall_error:
        return [Result(name, ERROR, f"Docker: {docker}; multinic cannot choose a firewall backend: {f.firewall_error}",
                       "apt-get install python3-nftables (libnftables), or MULTINIC_FIREWALL=iptables-nft "
                       "where iptables exists")]
    if f.firewall_selected == "nftables" and f.nft_error:
        return [Result(name, ERROR, f"Docker: {docker}; multinic: nftables, but {f.nft_error}",
                       "apt-get install python3-nftables")]
    stale = [t for t in f.nft_tables if t.split()[-1] == TABLE] if f.firewall_selected != "nftables" else []
    if stale:
        return [Result(name, WARN, f"Docker: {docker}; multinic: {ours}, and its nftables tables are still there "
                       f"({', '.join(stale)}): they publish what the state may no longer have",
                       "restart the plugin (it removes another backend's leftovers at start)")]
    if docker_on_nftables(f) and f.firewall_selected != "nftables":
        return [Result(name, WARN, f"Docker: {docker}; multinic: {ours} (it works, but writes iptables beside "
                       "Docker's nftables)", "MULTINIC_FIREWALL=nftables (or unset), restart the plugin")]
    return [Result(name, OK, f"Docker: {docker}; multinic: {ours}")]


def _bridge_match(f: Facts, nft_syntax: bool) -> tuple[str, ...]:
    bridges = _bridges(f)
    if all(b.startswith("mn-") for b in bridges):
        return ('"mn-*"',) if nft_syntax else ("mn-+",)
    return (("{ " + ", ".join(f'"{b}"' for b in bridges) + " }"),) if nft_syntax else tuple(bridges)


def check_forward_drop(f: Facts) -> list[Result]:
    """A forward hook whose policy is DROP in a table not multinic's: every base chain on a hook runs and a
    DROP is final, so it drops multinic's traffic unless it accepts it first. Docker's own iptables FORWARD
    is opened from DOCKER-USER (by multinic's chains there); anything else is named, with the fix."""
    name = "forward_drop"
    found: list[tuple[str, str]] = []  # (where, fix)
    views = {"ip": f.iptables, "ip6": f.ip6tables}
    # The iptables flavours, per family, where multinic's FORWARD chains (or opening) are.
    opened = {fam: [fl for fl in FLAVOURS if fl in v and v[fl].has_ours] for fam, v in views.items()}
    # An IPv6 forward policy drops nothing of multinic's while its networks have no IPv6.
    families = ("ip", "ip6") if f.state.has_ipv6() or not f.state.networks else ("ip",)
    for c in f.forward_drops:
        if c["family"] not in families and c["family"] in views:
            continue
        where = f"{c['family']} {c['table']} chain {c['chain']} (hook forward, priority {c['prio']}, policy drop)"
        iptables_nft = c["table"] == "filter" and c["chain"] == "FORWARD" and c["family"] in views
        if c["table"] == TABLE or (iptables_nft and "nft" in opened[c["family"]]):
            continue
        if iptables_nft:
            tool = "ip6tables" if c["family"] == "ip6" else "iptables"
            accepts = [f"{d} {b} -j ACCEPT" for b in _bridge_match(f, False) for d in ("-i", "-o")]
            fix = " && ".join(f"{tool} -I FORWARD {a}" for a in accepts)
            view = views[c["family"]].get("nft")
            present = view.chain_rules("filter", "FORWARD") if view else []
        else:
            accepts = [f"{d} {b} accept" for b in _bridge_match(f, True) for d in ("iifname", "oifname")]
            fix = "; ".join(f"nft insert rule {c['family']} {c['table']} {c['chain']} {a}" for a in accepts)
            present = c.get("rules", [])
        if not all(any(line.startswith(a) for line in present) for a in accepts):
            found.append((where, fix))
    for family in families:
        legacy = views[family].get("legacy")
        if legacy and legacy.policies.get("filter", {}).get("FORWARD") == "DROP" and "legacy" not in opened[family]:
            tool = "ip6tables" if family == "ip6" else "iptables"
            accepts = [f"{d} {b} -j ACCEPT" for b in _bridge_match(f, False) for d in ("-i", "-o")]
            if not all(a in legacy.chain_rules("filter", "FORWARD") for a in accepts):
                found.append((f"legacy {tool} filter FORWARD (policy DROP)",
                              " && ".join(f"{tool}-legacy -I FORWARD {a}" for a in accepts)))
    if not found:
        return [Result(name, OK, "no FORWARD DROP policy outside multinic's reach")]
    severity = ERROR if f.state.networks else WARN
    return [Result(name, severity, f"{where} drops multinic's forwarded traffic: another table's accept, multinic's "
                   "included, is not final", fix + "   (multinic's own rules still isolate its bridges); or make that "
                   "policy accept") for where, fix in found]


def _truthy(value: str | None, default: bool = True) -> bool:
    if value is None:
        return default
    return value.strip().lower() in ("1", "yes", "true", "on")

def check_networkd(f: Facts) -> list[Result]:
    name = "networkd"
    if not f.networkd_running:
        return [Result(name, OK, "systemd-networkd not running")]
    bad = [
        key
        for key in ("ManageForeignRoutingPolicyRules", "ManageForeignRoutes")
        if _truthy(f.networkd_settings.get(key))
    ]
    if not bad:
        return [Result(name, OK, "systemd-networkd leaves foreign rules and routes alone (Manage*=no)")]
    return [
        Result(
            name,
            ERROR,
            f"systemd-networkd runs with {', '.join(k + '=yes' for k in bad)} (the default): at every reconfigure it "
            "deletes multinic's ip rules and routes (systemd #19106/#22077); the healer puts them back, with a gap",
            f"install -D -m 644 contrib/systemd/networkd.conf.d/multinic.conf {NETWORKD_DROPIN_PATH} && "
            f"systemctl restart systemd-networkd\n--- {NETWORKD_DROPIN_PATH} ---\n{NETWORKD_DROPIN}",
        )
    ]

def check_network_manager(f: Facts) -> list[Result]:
    name = "networkmanager"
    if not f.nm_running:
        return [Result(name, OK, "NetworkManager not running")]
    managed_parents = [p for p in sorted(f.parents) if f.nm_managed.get(p)]
    ours = sorted(d for d, m in f.nm_managed.items() if m and (d.startswith("mn-") or d.startswith("mnh")))
    out = []
    for p in managed_parents:
        out.append(
            Result(
                name,
                WARN,
                f"NetworkManager manages parent {p}: a reconnect (DHCP renew, link flap) removes its address and "
                "routes for a moment, and with them multinic's routes through it (the healer re-adds them)",
                f"keep {p}'s connection stable (ipv4.dhcp-timeout infinity) or configure {p} outside NetworkManager: "
                f"nmcli device set {p} managed no",
            )
        )
    if ours:
        out.append(Result(name, WARN, f"NetworkManager manages multinic's links {', '.join(ours)}",
                          f"--- {NM_DROPIN_PATH} ---\n{NM_DROPIN}then: systemctl reload NetworkManager"))
    return out or [Result(name, OK, "NetworkManager runs but manages no parent of multinic")]

def check_parents(f: Facts) -> list[Result]:
    name = "parent"
    if not f.parents:
        return [Result(name, SKIP, "no parent NIC in use (give --parent IFNAME to check one)")]
    out = []
    gateways = {n.parent: n.parent_gateway for n in f.state.networks.values() if n.parent}
    with_ipv4 = {n.parent for n in f.state.networks.values() if n.parent and n.subnet}
    ipv6_only = {n.parent for n in f.state.networks.values() if n.parent and n.subnet6} - with_ipv4
    for p in _parents(f):
        if not p.exists:
            out.append(Result(name, ERROR, f"{p.name}: no such interface (renamed or removed?)",
                              f"restore {p.name}, or recreate its networks with -o parent=<current NIC name>"))
            continue
        if not p.up:
            out.append(Result(name, ERROR, f"{p.name} is down: the kernel removed every route through it",
                              f"ip link set {p.name} up"))
            continue
        if p.name in ipv6_only:
            out.append(Result(name, OK, f"{p.name}: its networks are IPv6-only (its IPv6 next hop is checked with "
                              "the IPv6 checks)"))
            continue
        if not p.addresses:
            out.append(Result(name, ERROR, f"{p.name} has no IPv4 address: nothing to source-route or masquerade "
                              "from, and replies cannot leave", f"ip addr add <ADDRESS/PREFIX> dev {p.name} "
                              "(and make it persistent in your network configuration)"))
            continue
        gw = p.next_hop or gateways.get(p.name) or p.default_gateway
        nets = [ipaddress.IPv4Interface(a).network for a in p.addresses]
        if gw is None:
            out.append(Result(name, WARN, f"{p.name} ({', '.join(p.addresses)}) has no gateway: no default route "
                              "through it, and none given", f"docker network create ... -o parent={p.name} "
                              f"-o parent_gateway=<next hop on {', '.join(map(str, nets))}>"))
            continue
        if not any(ipaddress.IPv4Address(gw) in n for n in nets):
            out.append(Result(name, ERROR, f"{p.name}: gateway {gw} is not on its network(s) "
                              f"{', '.join(map(str, nets))} (the address changed?): the table's default route "
                              "cannot be installed", f"recreate the networks on {p.name} with "
                              "-o parent_gateway=<next hop on the new network>"))
            continue
        how = f" ({p.next_hop_source})" if p.next_hop_source else ""
        if p.next_hop_answers is False:
            out.append(Result(name, ERROR, f"{p.name}: next hop {gw}{how} does not answer neighbour resolution on "
                              f"{p.name}: replies to clients behind {p.name} leave for a router that is not there",
                              f"docker network rm <its networks>, then create them again with "
                              f"-o parent={p.name} -o parent_gateway=<the router's address on "
                              f"{', '.join(map(str, nets))}>"))
            continue
        answers = ", answers" if p.next_hop_answers else ""
        out.append(Result(name, OK, f"{p.name}: up, {', '.join(p.addresses)}, gateway {gw}{how}{answers}"))
    return out

def _our_tables(f: Facts) -> set[int]:
    return {n.table for n in f.state.networks.values() if n.table}

def check_foreign_rules(f: Facts) -> list[Result]:
    name = "foreign_rules"
    out = []
    foreign = [r for r in f.rules if r.proto != RT_PROTO]
    at_prefs = [r for r in foreign if RULE_PREF_FWMARK <= r.priority <= RULE_PREF_SOURCE]
    if at_prefs:
        out.append(Result(name, ERROR, "ip rules not made by multinic sit at its priorities "
                          f"{RULE_PREF_FWMARK}-{RULE_PREF_SOURCE}: " + "; ".join(r.describe() for r in at_prefs),
                          "; ".join(f"ip rule del {r.describe(proto=False)}" for r in at_prefs)
                          + "   (or move that tool's rules to other priorities)"))
    tables = _our_tables(f)
    in_tables = [r for r in foreign if r.table in tables or TABLE_ALLOC_FIRST <= r.table <= TABLE_ALLOC_LAST]
    if in_tables:
        out.append(Result(name, WARN, "ip rules not made by multinic look up its tables: "
                          + "; ".join(r.describe() for r in in_tables),
                          "remove them, or give multinic networks another table (-o table=N)"))
    marks = [r for r in foreign if r.fwmark is not None and (r.fwmask if r.fwmask is not None else 0xFFFFFFFF)
             & MARK_MASK and r.fwmark & MARK_MASK]
    if marks:
        out.append(Result(name, WARN, f"ip rules not made by multinic match mark bits {MARK_MASK:#x}: "
                          + "; ".join(r.describe() for r in marks),
                          f"the other tool must keep off bits {MARK_MASK:#x} (multinic's)"))
    routes = {t: n for t, n in f.foreign_routes_by_table.items()
              if t in tables or TABLE_ALLOC_FIRST <= t <= TABLE_ALLOC_LAST}
    if routes:
        out.append(Result(name, WARN, "routes not made by multinic in its tables: "
                          + ", ".join(f"table {t}: {n}" for t, n in sorted(routes.items())),
                          "; ".join(f"ip route show table {t} | grep -v 'proto 211'" for t in sorted(routes))
                          + "   (find their owner; multinic's own routes carry proto 211)"))
    marks_fw = _foreign_mark_rules(f)
    if marks_fw:
        out.append(Result(name, WARN, f"firewall rules not made by multinic set mark bits {MARK_MASK:#x}: "
                          + "; ".join(marks_fw[:5]),
                          f"change them to a mask without {MARK_MASK:#x} (e.g. --set-xmark V/0xffff)"))
    return out or [Result(name, OK, "no foreign ip rule at 10000-10002, in multinic's tables or on its mark bits")]

_SET_MARK = re.compile(r"--set-(?:x)?mark\s+(0x[0-9a-fA-F]+|\d+)(?:/(0x[0-9a-fA-F]+|\d+))?")

def _foreign_mark_rules(f: Facts) -> list[str]:
    out = []
    for flavour in _docker_flavours(f) or list(f.iptables):
        view = f.iptables[flavour]
        for table, chains in view.rules.items():
            for chain, rules in chains.items():
                if chain.startswith(CHAIN_PREFIX):
                    continue
                for rule in rules:
                    if f"--comment {COMMENT}" in rule:
                        continue
                    m = _SET_MARK.search(rule)
                    if not m:
                        continue
                    mask = int(m.group(2), 0) if m.group(2) else 0xFFFFFFFF
                    if mask & MARK_MASK:
                        out.append(f"{flavour} {table} -A {chain} {rule}")
    return out
