"""``multinic doctor``: what is wrong with this host for multinic, and the exact fix.

Two halves, so every verdict is unit-testable:

- :func:`plugin.hostfacts.gather` reads the host once into :class:`Facts`: the kernel through netlink and
  ``/proc/sys`` (never ``/sys/class/net``: under ``nsenter --net`` it shows the root namespace),
  ``iptables-{nft,legacy}-save``, the state directory, Docker's API, the plugin's ``/Plugin.Health``,
  systemd-networkd's and NetworkManager's files, the process table. Paths that tests point at a
  tmp dir live in :class:`HostPaths`.
- ``check_*`` functions are pure: :class:`Facts` in, :class:`Result` list out. :data:`CHECKS` runs
  them all; :func:`exit_code` is 0 when all pass, 1 with warnings, 2 with errors.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .firewall.model import FILTER_ACCEPT, FILTER_FORWARD
from .state import State
from .tags import (
    CHAIN_PREFIX,
    COMMENT,
    MARK_MASK,
    RT_PROTO,
    RULE_PREF_FWMARK,
    RULE_PREF_SOURCE,
    TABLE_ALLOC_FIRST,
    TABLE_ALLOC_LAST,
)

OK, WARN, ERROR, SKIP = "ok", "warn", "error", "skip"
SEVERITY = {OK: 0, SKIP: 0, WARN: 1, ERROR: 2}
DEFAULT_SOCKET = "/run/docker/plugins/multinic.sock"
PLUGIN_TYPE = "docker.networkdriver"
FLAVOURS = ("nft", "legacy")
# Chains Docker puts in filter FORWARD (20.10: DOCKER*, 28: DOCKER-FORWARD, DOCKER-BRIDGE, ...).
DOCKER_USER = "DOCKER-USER"
MIN_ENGINE = (20, 10)
MIN_API = (1, 41)

REPO_CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
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


# -- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    check: str
    status: str  # ok | warn | error | skip
    message: str
    fix: str = ""


def exit_code(results: Iterable[Result]) -> int:
    return max((SEVERITY[r.status] for r in results), default=0)


# -- facts -------------------------------------------------------------------------------------
@dataclass
class ParentInfo:
    name: str
    exists: bool
    up: bool = False
    addresses: list[str] = field(default_factory=list)  # CIDR
    default_gateway: str | None = None  # a default route through it in a table not ours
    rp_filter: str | None = None


@dataclass
class RuleInfo:
    priority: int
    table: int
    proto: int
    fwmark: int | None = None
    fwmask: int | None = None
    src: str | None = None

    def describe(self, proto: bool = True) -> str:
        """``ip rule`` words; ``proto=False`` gives the selector ``ip rule del`` takes."""
        parts = [f"pref {self.priority}"]
        if self.src:
            parts.append(f"from {self.src}")
        if self.fwmark is not None:
            parts.append(f"fwmark {self.fwmark:#x}/{(self.fwmask or 0xFFFFFFFF):#x}")
        parts.append(f"lookup {self.table}" + (f" proto {self.proto}" if proto else ""))
        return " ".join(parts)


@dataclass
class IptablesView:
    """One flavour's tables as ``iptables-save`` prints them: table → chain → policy / rules."""

    available: bool = False
    policies: dict[str, dict[str, str]] = field(default_factory=dict)
    rules: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def chains(self, table: str) -> set[str]:
        return set(self.policies.get(table, {})) | set(self.rules.get(table, {}))

    def chain_rules(self, table: str, chain: str) -> list[str]:
        return self.rules.get(table, {}).get(chain, [])

    @property
    def has_docker(self) -> bool:
        return any(c == "DOCKER" or c.startswith("DOCKER-") for c in self.chains("filter") | self.chains("nat"))

    @property
    def has_ours(self) -> bool:
        return any(c.startswith(CHAIN_PREFIX) for t in ("filter", "nat", "mangle") for c in self.chains(t))


@dataclass
class Proc:
    pid: int
    ppid: int
    comm: str
    cmdline: str


@dataclass
class Facts:
    state_dir: str = ""
    state: State = field(default_factory=State)
    state_error: str | None = None
    ip_forward: str | None = None
    rp_filter_all: str | None = None
    parents: dict[str, ParentInfo] = field(default_factory=dict)
    br_netfilter_loaded: bool = False
    bridge_nf_call_iptables: str | None = None
    iptables: dict[str, IptablesView] = field(default_factory=dict)
    firewall_forced: str = ""
    rules: list[RuleInfo] = field(default_factory=list)
    foreign_routes_by_table: dict[int, int] = field(default_factory=dict)
    networkd_running: bool = False
    networkd_settings: dict[str, str] = field(default_factory=dict)
    networkd_files: list[str] = field(default_factory=list)
    nm_running: bool = False
    nm_managed: dict[str, bool] = field(default_factory=dict)  # ifname → managed
    link_names: dict[int, str] = field(default_factory=dict)  # ifindex → name
    docker_host: str = ""
    docker_error: str | None = None
    docker_version: str | None = None
    docker_api: str | None = None
    docker_networks: dict[str, dict[str, Any]] | None = None  # id → {name, driver, endpoints}
    plugins: list[dict[str, Any]] = field(default_factory=list)  # managed multinic plugins
    socket_path: str = DEFAULT_SOCKET
    socket_from: str = "default"
    socket_stat: dict[str, int] | None = None  # mode, uid
    socket_dir_stat: dict[str, int] | None = None
    state_dir_stat: dict[str, int] | None = None
    legacy_socket_alive: bool = False
    legacy_socket_path: str = DEFAULT_SOCKET
    processes: list[Proc] = field(default_factory=list)  # multinic serve processes in our netns
    health: dict[str, Any] | None = None
    health_error: str | None = None
    now: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.to_json()
        return data


# -- pure checks -------------------------------------------------------------------------------
def _parents(f: Facts) -> list[ParentInfo]:
    return [f.parents[name] for name in sorted(f.parents)]


def check_ip_forward(f: Facts) -> list[Result]:
    if f.ip_forward == "1":
        return [Result("ip_forward", OK, "net.ipv4.ip_forward=1")]
    return [
        Result(
            "ip_forward",
            ERROR,
            f"net.ipv4.ip_forward={f.ip_forward}: the host routes nothing between the parents and the bridges",
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
    # The same-bridge accept sits in MULTINIC-ACCEPT (entered first from MULTINIC-FORWARD).
    accepted = {r for chain in (FILTER_FORWARD, FILTER_ACCEPT) for r in (view.chain_rules("filter", chain) if view
                                                                      else [])}
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


def _docker_flavours(f: Facts) -> list[str]:
    return [fl for fl in FLAVOURS if fl in f.iptables and f.iptables[fl].has_docker]


def _our_flavours(f: Facts) -> list[str]:
    return [fl for fl in FLAVOURS if fl in f.iptables and f.iptables[fl].has_ours]


def _our_flavour(f: Facts) -> str | None:
    """The flavour whose FORWARD matters: where our chains are, else where Docker's are."""
    return next(iter(_our_flavours(f) or _docker_flavours(f)), None)


def _our_view(f: Facts) -> IptablesView | None:
    flavour = _our_flavour(f)
    return f.iptables[flavour] if flavour else None


def _target(rule: str) -> str | None:
    m = re.search(r"(?:^|\s)-j\s+(\S+)", rule)
    return m.group(1) if m else None


def check_forward(f: Facts) -> list[Result]:
    flavour = _our_flavour(f)
    if flavour is None:
        return [Result("forward", SKIP, "no iptables view (neither Docker's nor multinic's chains found)")]
    view = f.iptables[flavour]
    policy = view.policies.get("filter", {}).get("FORWARD", "ACCEPT")
    if not f.state.networks:
        return [Result("forward", OK, f"FORWARD policy {policy}; no multinic network, so no jump expected")]
    rules = view.chain_rules("filter", "FORWARD")
    targets = [_target(r) for r in rules]
    ours = [i for i, r in enumerate(rules) if targets[i] == "MULTINIC-FORWARD" and COMMENT in r]
    user_has_ours = any(_target(r) == "MULTINIC-FORWARD" for r in view.chain_rules("filter", DOCKER_USER))
    entry = [i for i, t in enumerate(targets) if t == DOCKER_USER] if user_has_ours else []
    ours_at = min(ours + entry, default=None)
    tool = f"iptables-{flavour}"
    jump = "FORWARD -m comment --comment multinic -j MULTINIC-FORWARD"
    if ours_at is None:
        return [
            Result(
                "forward",
                ERROR,
                f"FORWARD policy {policy} and no jump to MULTINIC-FORWARD (comment {COMMENT!r}) in FORWARD or "
                "DOCKER-USER: multinic's networks are not forwarded (or not isolated)",
                "multinic reconcile   (managed plugin: docker plugin disable/enable it; either re-inserts the jumps)",
            )
        ]
    before = [(i, rules[i]) for i in range(ours_at) if targets[i] not in (DOCKER_USER, "MULTINIC-FORWARD")]
    fix = (f"{tool} -D {jump} && {tool} -I {jump.replace('FORWARD', 'FORWARD 1', 1)}   "
           "(or delete the jump and run multinic reconcile, which inserts it first)")
    docker_first = [(i, r) for i, r in before
                    if (_target(r) or "").startswith("DOCKER") or re.search(r"-[io] (docker0|br-)", r)]
    if docker_first:
        i, r = docker_first[0]
        return [
            Result(
                "forward",
                ERROR,
                f"FORWARD rule {i + 1} ({r}) comes before multinic's jump (rule {ours_at + 1}): another tool "
                "reordered FORWARD, and Docker's accepts now bypass multinic's isolation",
                fix,
            )
        ]
    if before:
        listing = "; ".join(f"rule {i + 1}: {r}" for i, r in before[:3])
        return [Result("forward", WARN, f"FORWARD rules of another tool run before multinic's jump (rule "
                       f"{ours_at + 1}): {listing}", fix + "; or move that tool's rules below it")]
    return [Result("forward", OK, f"FORWARD policy {policy}; multinic's jump (rule {ours_at + 1}) comes first")]


def check_iptables_flavour(f: Facts) -> list[Result]:
    docker, ours = _docker_flavours(f), _our_flavours(f)
    name = "iptables_flavour"
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
    if f.firewall_forced and f.firewall_forced.split("-")[0] != docker[0]:
        return [Result(name, ERROR, f"MULTINIC_FIREWALL={f.firewall_forced} but Docker uses iptables-{docker[0]}",
                       setting)]
    where = "multinic's chains are there too" if ours else "multinic has no chains yet"
    return [Result(name, OK, f"Docker uses iptables-{docker[0]}; {where}")]


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
    for p in _parents(f):
        if not p.exists:
            out.append(Result(name, ERROR, f"{p.name}: no such interface (renamed or removed?)",
                              f"restore {p.name}, or recreate its networks with -o parent=<current NIC name>"))
            continue
        if not p.up:
            out.append(Result(name, ERROR, f"{p.name} is down: the kernel removed every route through it",
                              f"ip link set {p.name} up"))
            continue
        if not p.addresses:
            out.append(Result(name, ERROR, f"{p.name} has no IPv4 address: nothing to source-route or masquerade "
                              "from, and replies cannot leave", f"ip addr add <ADDRESS/PREFIX> dev {p.name} "
                              "(and make it persistent in your network configuration)"))
            continue
        gw = gateways.get(p.name) or p.default_gateway
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
        out.append(Result(name, OK, f"{p.name}: up, {', '.join(p.addresses)}, gateway {gw}"))
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


def check_docker(f: Facts) -> list[Result]:
    name = "docker"
    if f.docker_error:
        return [Result(name, ERROR, f"Docker API not reachable at {f.docker_host or 'the default socket'}: "
                       f"{f.docker_error}", "systemctl start docker, or set DOCKER_HOST to dockerd's socket")]
    ver = _version_tuple(f.docker_version or "")
    api = _version_tuple(f.docker_api or "")
    if ver < MIN_ENGINE or api < MIN_API:
        return [Result(name, ERROR, f"Docker {f.docker_version} (API {f.docker_api}) is too old: multinic needs "
                       "Engine 20.10 (API 1.41) or newer", "upgrade docker (docker.io >= 20.10, or docker-ce)")]
    return [Result(name, OK, f"Docker {f.docker_version}, API {f.docker_api}")]


def _version_tuple(text: str) -> tuple[int, int]:
    parts = re.findall(r"\d+", text)
    return (int(parts[0]), int(parts[1])) if len(parts) >= 2 else (0, 0)


def check_socket(f: Facts) -> list[Result]:
    name = "socket"
    if f.socket_stat is None:
        return [Result(name, ERROR, f"no plugin socket at {f.socket_path} ({f.socket_from}): multinic is not "
                       "serving", "start it: systemctl start multinic (service) or docker plugin enable <plugin>")]
    mode, uid = f.socket_stat["mode"], f.socket_stat["uid"]
    dir_closed = f.socket_dir_stat is not None and not f.socket_dir_stat["mode"] & 0o077 and \
        f.socket_dir_stat["uid"] == 0
    perm = stat.S_IMODE(mode)
    if uid != 0 or (perm & 0o022 and not dir_closed):
        return [Result(name, ERROR, f"{f.socket_path} is mode {perm:04o} owner uid {uid}: any local user who "
                       "can connect rewrites the host's routes and firewall",
                       f"chmod 600 {f.socket_path}; chown root {f.socket_path}; "
                       "upgrade multinic (it serves with umask 077)")]
    return [Result(name, OK, f"{f.socket_path}: mode {perm:04o}, root" + (" (directory 0700)" if dir_closed else ""))]


def _driver_names(f: Facts) -> set[str]:
    names = {Path(f.socket_path).stem, Path(f.legacy_socket_path).stem}
    for p in f.plugins:
        names.add(p["name"])
        names.add(p["name"].split(":")[0] + ":latest" if ":" not in p["name"] else p["name"])
    return names


def check_ghosts(f: Facts, grace: float = 120.0) -> list[Result]:
    name = "ghosts"
    if f.docker_networks is None:
        return [Result(name, SKIP, "Docker not reachable: state not compared with Docker's networks")]
    out = []
    drivers = _driver_names(f)
    docker_ours = {nid: n for nid, n in f.docker_networks.items() if n.get("driver") in drivers}
    state_only = [n for nid, n in f.state.networks.items() if nid not in f.docker_networks]
    if state_only:
        out.append(Result(name, WARN, "networks in multinic's state that Docker no longer has (their bridges, rules "
                          "and ports stay): " + ", ".join(f"{n.id[:12]} ({n.bridge})" for n in state_only),
                          "restart the plugin (it forgets networks dockerd no longer has at start; the healer does "
                          "within MULTINIC_GC_INTERVAL)"))
    docker_only = [n for nid, n in docker_ours.items() if nid not in f.state.networks]
    if docker_only:
        out.append(Result(name, ERROR, "Docker networks of multinic that its state does not know (containers on "
                          "them cannot start): " + ", ".join(f"{n['name']} ({n['driver']})" for n in docker_only),
                          "; ".join(f"docker network rm {n['name']}" for n in docker_only)
                          + "; then create them again (or point multinic at the state directory that has them: "
                          f"--state-dir; this one is {f.state_dir})"))
    known_eps = {ep for n in f.docker_networks.values() for ep in n.get("endpoints", ())}
    ghost_eps = [ep for ep in f.state.endpoints.values()
                 if ep.id not in known_eps and ep.network_id in f.docker_networks and f.now - ep.created > grace]
    if ghost_eps:
        out.append(Result(name, WARN, "endpoints in state with no container in Docker (their veths and ports stay): "
                          + ", ".join(ep.id[:12] for ep in ghost_eps),
                          "wait for the healer's garbage collection, or restart the plugin"))
    missing_eps = [(nid, ep) for nid, n in docker_ours.items() if nid in f.state.networks
                   for ep in n.get("endpoints", ()) if ep not in f.state.endpoints]
    if missing_eps:
        out.append(Result(name, ERROR, "containers Docker attaches to multinic networks with no endpoint in state: "
                          + ", ".join(ep[:12] for _, ep in missing_eps), "docker restart those containers"))
    return out or [Result(name, OK, f"state matches Docker: {len(f.state.networks)} network(s), "
                          f"{len(f.state.endpoints)} endpoint(s)")]


def check_instances(f: Facts) -> list[Result]:
    name = "instances"
    seen = []
    if f.legacy_socket_alive:
        seen.append(f"legacy plugin on {f.legacy_socket_path}")
    seen += [f"managed plugin {p['name']} ({p['id'][:12]})" for p in f.plugins if p.get("enabled")]
    pids = {p.pid for p in f.processes}
    roots = [p for p in f.processes if p.ppid not in pids]
    if len(roots) > 1 or len(seen) > 1:
        listing = seen + [f"pid {p.pid}: {p.cmdline}" for p in roots]
        return [Result(name, ERROR, "more than one multinic runs on this host; they fight over the same rules, "
                       "tables and marks: " + "; ".join(listing),
                       "keep one: docker plugin disable <plugin> (managed) or systemctl disable --now multinic "
                       "(service); kill stray pids")]
    what = seen[0] if seen else (f"pid {roots[0].pid}" if roots else "none running")
    return [Result(name, OK, f"one instance: {what}")]


def _alive(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, dict):
        for key in ("alive", "healthy", "ok", "running"):
            if isinstance(value.get(key), bool):
                return value[key]
    return None


def health_loops(health: dict[str, Any]) -> dict[str, bool]:
    """Loop name → alive from whatever shape ``/Plugin.Health`` has: ``{"healer": {"alive": ..}}``,
    ``{"loops": {"healer": true}}``, ``{"loops": [{"name": "healer", "alive": ..}]}``; {} for the plain shape."""
    found: dict[str, bool] = {}
    for container_key in ("loops", "helpers", "background", "processes"):
        sub = health.get(container_key)
        if isinstance(sub, dict):
            for key, value in sub.items():
                if (alive := _alive(value)) is not None:
                    found[key] = alive
        elif isinstance(sub, list):
            for item in sub:
                if isinstance(item, dict) and "name" in item and (alive := _alive(item)) is not None:
                    found[str(item["name"])] = alive
    for key in ("healer", "watcher"):
        if key in health and (alive := _alive(health[key])) is not None:
            found[key] = alive
    return found


def check_health(f: Facts) -> list[Result]:
    name = "health"
    if f.socket_stat is None:
        return [Result(name, SKIP, "no plugin socket to ask (see the socket check)")]
    if f.health is None:
        return [Result(name, ERROR, f"/Plugin.Health on {f.socket_path} did not answer: {f.health_error}",
                       "look at the plugin's log (journalctl -u multinic, or dockerd's log for a managed plugin)")]
    out = []
    if f.health.get("healthy") is False:
        problems = f.health.get("problems")
        why = "; ".join(map(str, problems)) if isinstance(problems, list) and problems else json.dumps(f.health)
        out.append(Result(name, ERROR, f"plugin reports unhealthy: {why}", "restart the plugin and read its log"))
    loops = health_loops(f.health)
    if not loops:
        out.append(Result(name, OK if not out else WARN, f"plugin {f.health.get('version', '?')} answers; it does not "
                          "report its healer/watcher loops (older Health shape), not checked"))
        return out
    dead = sorted(k for k, v in loops.items() if not v)
    missing = [k for k in ("healer", "watcher") if k not in loops]
    if dead:
        out.append(Result(name, ERROR, f"plugin's {', '.join(dead)} loop(s) not alive: drift is not repaired / "
                          "gateway priority not applied", "restart the plugin and read its log"))
    elif missing:
        out.append(Result(name, WARN, f"Health reports {', '.join(sorted(loops))} but not {', '.join(missing)}"))
    else:
        out.append(Result(name, OK, "alive: " + ", ".join(sorted(loops))))
    return out


def check_state(f: Facts) -> list[Result]:
    name = "state"
    if f.state_error:
        return [Result(name, ERROR, f"{f.state_dir}/state.json cannot be read: {f.state_error}",
                       f"move {f.state_dir}/state.json aside and restart the plugin; then recreate multinic networks "
                       "Docker still lists (the ghosts check names them)")]
    if f.state_dir_stat is None:
        return [Result(name, OK, f"{f.state_dir} does not exist yet (no network created)")]
    if f.state_dir_stat["mode"] & 0o022 or f.state_dir_stat["uid"] != 0:
        return [Result(name, WARN, f"{f.state_dir} is mode {stat.S_IMODE(f.state_dir_stat['mode']):04o} uid "
                       f"{f.state_dir_stat['uid']}: others can rewrite what multinic applies to the kernel",
                       f"chown root {f.state_dir} && chmod 700 {f.state_dir}")]
    return [Result(name, OK, f"{f.state_dir}: {len(f.state.networks)} network(s), {len(f.state.endpoints)} "
                   "endpoint(s)")]


def check_managed_mounts(f: Facts) -> list[Result]:
    """A bind mount whose source is missing makes ``docker plugin enable`` fail (facts.md)."""
    out = []
    for p in f.plugins:
        for src in p.get("missing_mounts") or ():
            fix = "touch /run/xtables.lock" if src.endswith(".lock") else f"mkdir -p -m 700 {src}"
            out.append(Result("plugin_mounts", ERROR if not p.get("enabled") else WARN,
                              f"managed plugin {p['name']}: mount source {src} does not exist, so `docker plugin "
                              "enable` fails (and after a reboot, /run is empty again)",
                              f"{fix}; or docker plugin set {p['name']} <mount>.source=<existing path>"))
    return out


CHECKS: tuple[Callable[[Facts], list[Result]], ...] = (
    check_state,
    check_managed_mounts,
    check_ip_forward,
    check_rp_filter,
    check_br_netfilter,
    check_forward,
    check_iptables_flavour,
    check_networkd,
    check_network_manager,
    check_parents,
    check_foreign_rules,
    check_docker,
    check_socket,
    check_ghosts,
    check_instances,
    check_health,
)


def run_checks(f: Facts) -> list[Result]:
    return [r for check in CHECKS for r in check(f)]


# -- output ------------------------------------------------------------------------------------
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
