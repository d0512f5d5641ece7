"""What ``multinic doctor`` knows of the host, as plain data (:func:`.gather.gather` reads it), and the
result of a check. The checks (:mod:`.host`, :mod:`.plugin`) are pure functions of these."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

from ...kernel.firewall.view import View
from ...plan.state import State
from ...settings import DEFAULT_SOCKET

OK, WARN, ERROR, SKIP = "ok", "warn", "error", "skip"
SEVERITY = {OK: 0, SKIP: 0, WARN: 1, ERROR: 2}
FLAVOURS = ("nft", "legacy")


@dataclass(frozen=True)
class Result:
    check: str
    status: str  # ok | warn | error | skip
    message: str
    fix: str = ""

def exit_code(results: Iterable[Result]) -> int:
    return max((SEVERITY[r.status] for r in results), default=0)

@dataclass
class ParentInfo:
    name: str
    exists: bool
    up: bool = False
    addresses: list[str] = field(default_factory=list)  # CIDR
    default_gateway: str | None = None  # a default route through it in a table not ours
    rp_filter: str | None = None
    next_hop: str | None = None  # what multinic routes the parent's table through
    next_hop_source: str = ""  # how it was chosen (plan.network.parent_next_hop)
    next_hop_answers: bool | None = None  # neighbour resolution on the parent (None: not probed)
    addresses6: list[str] = field(default_factory=list)  # global, stable (CIDR)
    disable_ipv6: str | None = None

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
    iptables: dict[str, View] = field(default_factory=dict)
    ip6tables: dict[str, View] = field(default_factory=dict)
    forwarding6: str | None = None
    accept_ra: dict[str, int] = field(default_factory=dict)  # ifname → net.ipv6.conf.<if>.accept_ra
    ra_default: list[str] = field(default_factory=list)  # NICs whose IPv6 default route came from an RA
    default_routes6: list[str] = field(default_factory=list)  # NICs with an IPv6 default route not ours
    firewall_forced: str = ""
    # nftables, read through libnftables: None when it loads (else why not), every table ("ip multinic"),
    # base chains on the forward hook with policy drop ({"family", "table", "chain", "prio"}), our IPv4
    # table's chains → their rules' comments (each rule's iptables text).
    nft_error: str | None = None
    nft_tables: list[str] = field(default_factory=list)
    forward_drops: list[dict[str, Any]] = field(default_factory=list)
    native_rules: dict[str, list[str]] = field(default_factory=dict)
    docker_firewall: str = ""  # where Docker's firewall is in the kernel: nftables | nft | legacy | ""
    docker_firewall_backend: str | None = None  # `docker info`'s FirewallBackend.Driver (None: not reported)
    firewall_selected: str = ""  # the backend multinic chooses here (plugin.kernel.firewall.detect_flavour)
    firewall_error: str | None = None  # why it cannot choose one
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
    docker_networks: dict[str, dict[str, Any]] | None = None  # id → {name, driver, scope, config_from, endpoints}
    swarm_node: str = ""  # "manager" or "worker" when this dockerd is an active swarm node, else ""
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
