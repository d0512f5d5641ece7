"""``multinic doctor``'s gatherer: reads this host (this network namespace) once into :class:`.facts.Facts`:
the kernel through netlink and ``/proc/sys``, both iptables flavours, the state directory, Docker's API,
the plugin's ``/Plugin.Health``, systemd-networkd's and NetworkManager's files, the process table, and
whether each parent's next hop answers."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ...api.options import RESERVED_TABLES
from ...kernel.firewall.view import read as read_iptables
from ...kernel.tags import RT_PROTO
from ...plan.state import Store
from ...settings import DEFAULT_SOCKET, DEFAULT_STATE_DIR, Settings
from ...settings import load as load_settings
from .facts import FLAVOURS, Facts, ParentInfo, Proc, RuleInfo
from .host import _truthy

PLUGIN_TYPE = "docker.networkdriver"



@dataclass
class HostPaths:
    """Where the gatherer reads files; tests point ``root`` at a tmp dir for networkd/NM/processes."""

    root: str = "/"
    proc: str = "/proc"

    def etc(self, *parts: str) -> Path:
        return Path(self.root, "etc", *parts)

    def run(self, *parts: str) -> Path:
        return Path(self.root, "run", *parts)

    def usr_lib(self, *parts: str) -> Path:
        return Path(self.root, "usr", "lib", *parts)

def networkd_config(paths: HostPaths) -> tuple[dict[str, str], list[str]]:
    """[Network] settings of networkd.conf after its drop-ins (systemd order: the main file, then every
    ``*.conf`` of networkd.conf.d by file name; /etc hides /run hides /usr/lib for a same name)."""
    mains = [paths.etc("systemd", "networkd.conf"), paths.usr_lib("systemd", "networkd.conf")]
    files: list[Path] = [next((m for m in mains if m.is_file()), mains[0])]
    dropins: dict[str, Path] = {}
    for d in (paths.usr_lib("systemd", "networkd.conf.d"), paths.run("systemd", "networkd.conf.d"),
              paths.etc("systemd", "networkd.conf.d")):
        if d.is_dir():
            for p in d.glob("*.conf"):
                dropins[p.name] = p  # later directories win
    files += [dropins[name] for name in sorted(dropins)]
    settings: dict[str, str] = {}
    read = []
    for path in files:
        if not path.is_file():
            continue
        parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            parser.read_string(path.read_text())
        except (configparser.Error, OSError):
            continue
        read.append(str(path))
        if parser.has_section("Network"):
            settings.update(dict(parser.items("Network")))
    return settings, read

def _netns_id(pid: str | int, proc: str) -> str | None:
    try:
        return os.readlink(f"{proc}/{pid}/ns/net")
    except OSError:
        return None

def scan_processes(proc: str) -> list[Proc]:
    """Processes in this network namespace (a multinic or networkd in another netns is not ours)."""
    me = _netns_id("self", "/proc")
    out = []
    for entry in sorted(Path(proc).iterdir(), key=lambda e: int(e.name) if e.name.isdigit() else -1):
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            ppid = int(next((ln.split()[1] for ln in (entry / "status").read_text().splitlines()
                             if ln.startswith("PPid:")), "0"))
        except (OSError, ValueError):
            continue
        ns = _netns_id(entry.name, proc)
        if ns is not None and me is not None and ns != me:
            continue
        out.append(Proc(int(entry.name), ppid, comm, cmdline))
    return out

_SERVE = re.compile(r"(?:^|[\s/])(?:multinic|plugin(?:\.ops\.cli)?)\s+(?:--\S+\s+\S+\s+)*serve(?:\s|$)")

def multinic_servers(procs: list[Proc]) -> list[Proc]:
    return [p for p in procs if _SERVE.search(p.cmdline) and p.pid != os.getpid()]

def nm_managed(paths: HostPaths, names: dict[int, str]) -> dict[str, bool]:
    """NetworkManager's view, from ``nmcli`` if present, else its per-device files in /run."""
    out: dict[str, bool] = {}
    devices = paths.run("NetworkManager", "devices")
    if devices.is_dir():
        for entry in devices.iterdir():
            if entry.name.isdigit() and int(entry.name) in names:
                parser = configparser.ConfigParser(strict=False, interpolation=None)
                try:
                    parser.read_string(entry.read_text())
                except (configparser.Error, OSError):
                    continue
                out[names[int(entry.name)]] = _truthy(parser.get("device", "managed", fallback="true"))
    nmcli = shutil.which("nmcli")
    if nmcli and paths.root == "/":
        proc = subprocess.run([nmcli, "-t", "-f", "DEVICE,STATE", "device", "status"], capture_output=True,
                              text=True, timeout=10)
        for line in proc.stdout.splitlines():
            dev, _, state = line.partition(":")
            if dev:
                out[dev] = not state.startswith("unmanaged")
    return out

def http_over_unix(path: str, url: str, body: bytes = b"{}", timeout: float = 5) -> tuple[int, bytes]:
    import http.client

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(path)
            self.sock = s

    conn = Conn("localhost", timeout=timeout)
    try:
        conn.request("POST", url, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()

def _stat(path: str) -> dict[str, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"mode": st.st_mode, "uid": st.st_uid}

def _connectable(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError:
            return False
    return True

def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None

def gather_kernel(f: Facts, extra_parents: Iterable[str] = ()) -> None:
    """ip_forward, rp_filter, br_netfilter, parents and whether their next hop answers, ip rules, foreign
    routes in any table (this netns)."""
    from ...kernel import links, routes
    from ...kernel.netlink import Rtnl

    f.ip_forward = _read("/proc/sys/net/ipv4/ip_forward")
    f.rp_filter_all = _read("/proc/sys/net/ipv4/conf/all/rp_filter")
    f.br_netfilter_loaded = Path("/proc/sys/net/bridge").is_dir()
    f.bridge_nf_call_iptables = _read("/proc/sys/net/bridge/bridge-nf-call-iptables")
    hops = {n.parent: (n.parent_gateway, n.gateway_source) for n in f.state.networks.values() if n.parent}
    with Rtnl() as rt:
        gateways = routes.default_gateways(rt)
        for name in sorted(set(hops) | set(extra_parents)):
            facts = links.parent_facts(rt, name)
            info = ParentInfo(name, facts.exists, facts.up, [str(a) for a in facts.addresses],
                              addresses6=[str(a) for a in facts.addresses6])
            if facts.exists:
                info.disable_ipv6 = _read(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
                gw = gateways.get(name)
                info.default_gateway = str(gw) if gw else None
                info.rp_filter = _read(f"/proc/sys/net/ipv4/conf/{name}/rp_filter")
                info.next_hop, info.next_hop_source = hops.get(name) or (info.default_gateway, "")
                if info.next_hop and facts.up:
                    info.next_hop_answers = links.neighbour_answers(rt, name, info.next_hop)
            f.parents[name] = info
        for m in rt.get_rules(socket.AF_INET):
            src = m.get_attr("FRA_SRC")
            mark = m.get_attr("FRA_FWMARK")
            f.rules.append(RuleInfo(
                priority=m.get_attr("FRA_PRIORITY") or 0, table=m.get_attr("FRA_TABLE") or m["table"],
                proto=m.get_attr("FRA_PROTOCOL") or 0, fwmark=mark,
                fwmask=m.get_attr("FRA_FWMASK") if mark is not None else None,
                src=f"{src}/{m['src_len']}" if src else None,
            ))
        for m in rt.get_routes(socket.AF_INET):
            table = routes.table_of(m)
            if m["proto"] != RT_PROTO and table not in RESERVED_TABLES:
                f.foreign_routes_by_table[table] = f.foreign_routes_by_table.get(table, 0) + 1
        f.link_names = links.link_names(rt)
        f.ra_default = sorted(routes.ra_defaults(rt))
        f.default_routes6 = sorted(str(dev) for dev in routes.default_gateways(rt, socket.AF_INET6))
    f.forwarding6 = _read("/proc/sys/net/ipv6/conf/all/forwarding")
    for name in f.link_names.values():
        value = _read(f"/proc/sys/net/ipv6/conf/{name}/accept_ra")
        if value is not None and value.lstrip("-").isdigit():
            f.accept_ra[name] = int(value)


def gather_nftables(f: Facts) -> None:
    """What nf_tables holds (in-process, libnftables), where Docker's firewall is, and the backend multinic
    chooses here."""
    from ...errors import Failure
    from ...kernel.firewall import detect_flavour, docker_firewall, nft
    from ...kernel.firewall.native import TABLE

    f.nft_error = nft.available()
    if f.nft_error is None:
        f.nft_tables = sorted(f"{family} {name}" for family, name in nft.tables())
        f.forward_drops = [{"family": c["family"], "table": c["table"], "chain": c["name"], "prio": c.get("prio", 0),
                            "rules": [" ".join(line.split()) for line in nft.text(
                                f"list chain {c['family']} {c['table']} {c['name']}").splitlines()]}
                           for c in nft.chains() if c.get("hook") == "forward" and c.get("policy") == "drop"]
        for item in nft.listing(f"list table ip {TABLE}"):
            if "chain" in item:
                f.native_rules.setdefault(item["chain"]["name"], [])
            elif "rule" in item:
                f.native_rules.setdefault(item["rule"]["chain"], []).append(item["rule"].get("comment", ""))
    f.docker_firewall = docker_firewall()
    try:
        f.firewall_selected = detect_flavour(f.firewall_forced)
    except Failure as exc:
        f.firewall_error = str(exc)


def gather_docker(f: Facts, settings: Settings, timeout: int = 5) -> None:
    from .. import engine

    f.docker_host = settings.docker_host
    try:
        api = engine.client(settings, timeout)
        ver = api.version()
        f.docker_version, f.docker_api = str(ver.get("Version")), str(ver.get("ApiVersion"))
        info = api.info()
        f.docker_firewall_backend = (info.get("FirewallBackend") or {}).get("Driver") or None
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") == "active":
            f.swarm_node = "manager" if swarm.get("ControlAvailable") else "worker"
        nets = {}
        for net in api.networks():
            detail = api.inspect_network(net["Id"])
            nets[net["Id"]] = {
                "name": net.get("Name", ""),
                "driver": net.get("Driver", ""),
                "scope": net.get("Scope", ""),
                "here": engine.on_this_node(detail),
                "config_from": (detail.get("ConfigFrom") or {}).get("Network") or "",
                "endpoints": sorted(
                    info.get("EndpointID", "") for info in (detail.get("Containers") or {}).values()
                ),
            }
        f.docker_networks = nets
        for plugin in api.plugins():
            cfg = plugin.get("Config") or {}
            types = [f"{t.get('Prefix', 'docker')}.{t.get('Capability')}" if isinstance(t, dict) else str(t)
                     for t in (cfg.get("Interface") or {}).get("Types") or []]
            if not plugin.get("Name", "").startswith("multinic") or not any(PLUGIN_TYPE in t for t in types):
                continue
            settings = plugin.get("Settings") or {}
            mounts = {m.get("Name"): m.get("Source") for m in settings.get("Mounts") or []}
            env = dict(e.split("=", 1) for e in settings.get("Env") or [] if "=" in e)
            missing = sorted(src for src in mounts.values() if src and not os.path.exists(src))
            f.plugins.append({
                "name": plugin.get("Name", ""),
                "id": plugin.get("Id", ""),
                "enabled": bool(plugin.get("Enabled")),
                "socket": f"/run/docker/plugins/{plugin.get('Id', '')}/"
                          f"{(cfg.get('Interface') or {}).get('Socket') or 'multinic.sock'}",
                "state_source": mounts.get("state") or host_path(
                    env.get("MULTINIC_STATE_DIR", "/host/var/lib/multinic"), settings.get("Mounts") or []),
                "firewall": env.get("MULTINIC_FIREWALL", ""),
                "missing_mounts": missing,
            })
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        f.docker_error = str(exc) or type(exc).__name__

def host_path(path: str, mounts: list[dict[str, Any]]) -> str | None:
    """Where a path inside a managed plugin is on the host, through its bind mounts (the plugin
    sees the host's /var/lib as /host/var/lib); None if no mount covers it."""
    best = None
    for m in mounts:
        dest, src = (m.get("Destination") or "").rstrip("/"), m.get("Source")
        covers = path == dest or path.startswith(dest + "/")
        if src and dest and covers and (best is None or len(dest) > len(best[0])):
            best = (dest, src)
    return None if best is None else best[1].rstrip("/") + path[len(best[0]):]

def locate(plugins: list[dict[str, Any]], settings: Settings, socket_given: bool, state_given: bool,
           service_socket_exists: bool) -> tuple[str, str, str, str]:
    """(socket, where it came from, the legacy socket to count as an instance, state dir).

    The socket given (``--socket``, MULTINIC_SOCKET), else the service's, unless only an enabled managed
    plugin exists: then its ``/run/docker/plugins/<id>/<socket>`` and the host path of its state."""
    enabled = next((p for p in plugins if p.get("enabled")), None)
    socket_given = socket_given or settings.socket != DEFAULT_SOCKET
    state_given = state_given or settings.state_dir != DEFAULT_STATE_DIR
    sock, origin = settings.socket, "given" if socket_given else "default"
    if not socket_given and enabled and not service_socket_exists:
        sock, origin = enabled["socket"], f"managed plugin {enabled['name']}"
    managed = enabled is not None and sock == enabled["socket"]
    legacy = DEFAULT_SOCKET if managed else sock
    state = settings.state_dir if state_given else (
        enabled.get("state_source") if managed and enabled else None) or DEFAULT_STATE_DIR
    return sock, origin, legacy, state


def gather(settings: Settings, *, state_given: bool = False, socket_given: bool = False, parents: Iterable[str] = (),
           paths: HostPaths | None = None, docker: bool = True, now: float | None = None) -> Facts:
    """Read this host (this network namespace) once. The socket and state not given: the managed
    plugin's if one is enabled, else the service's defaults."""
    import time

    paths = paths or HostPaths()
    f = Facts(now=time.time() if now is None else now)
    if docker:
        gather_docker(f, settings)
    enabled = next((p for p in f.plugins if p["enabled"]), None)
    f.socket_path, f.socket_from, f.legacy_socket_path, f.state_dir = locate(
        f.plugins, settings, socket_given, state_given, os.path.exists(DEFAULT_SOCKET))
    f.state_dir_stat = _stat(f.state_dir)
    try:
        f.state = Store(f.state_dir).load()
    except Exception as exc:  # noqa: BLE001
        f.state_error = str(exc)
    gather_kernel(f, parents)
    f.firewall_forced = settings.firewall
    if not f.firewall_forced and enabled and f.socket_path == enabled["socket"]:
        plugin_env = {"MULTINIC_FIREWALL": enabled.get("firewall", "")}
        f.firewall_forced = load_settings({}, plugin_env).firewall  # as the plugin reads it
    for flavour in FLAVOURS:
        f.iptables[flavour] = read_iptables(flavour)
        f.ip6tables[flavour] = read_iptables(flavour, family=6)
    gather_nftables(f)
    f.networkd_settings, f.networkd_files = networkd_config(paths)
    procs = scan_processes(paths.proc)
    f.networkd_running = any(p.comm == "systemd-network" for p in procs)
    f.nm_running = any(p.comm == "NetworkManager" for p in procs)
    if f.nm_running:
        f.nm_managed = nm_managed(paths, f.link_names)
    f.processes = multinic_servers(procs)
    f.socket_stat = _stat(f.socket_path)
    f.socket_dir_stat = _stat(str(Path(f.socket_path).parent))
    f.legacy_socket_alive = os.path.exists(f.legacy_socket_path) and _connectable(f.legacy_socket_path)
    if f.socket_stat is not None:
        try:
            status, raw = http_over_unix(f.socket_path, "/Plugin.Health")
            data = json.loads(raw or b"{}")
            if status == 200 and isinstance(data, dict):
                f.health = data
                if isinstance(data.get("firewall"), str) and data["firewall"]:  # what the plugin chose, not a guess
                    f.firewall_selected, f.firewall_error = data["firewall"], None
            else:
                f.health_error = f"HTTP {status}: {raw[:200]!r}"
        except Exception as exc:  # noqa: BLE001
            f.health_error = str(exc) or type(exc).__name__
    else:
        f.health_error = "no socket"
    return f
