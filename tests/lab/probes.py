"""Traffic and state probes for tests: an echo server answering each connection with the address
it saw, a TCP reader, an HTTP GET, packet counters, and a dump of the host's routing and firewall
for byte-for-byte before/after comparisons. One implementation, for the e2e lab and the kernel tests."""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import time
from typing import Callable

from . import engine29
from .plugin import stop_group
from .topology import LabError, clean_env

ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if ":" in sys.argv[1]:  # IPv6 only: a server on 0.0.0.0 may share the port
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(64)
def echo(conn):
    with conn:
        try:
            while data := conn.recv(4096):
                conn.sendall(data)
        except OSError:
            pass
print("ready", flush=True)
while True:
    conn, peer = srv.accept()
    if sys.argv[3] == "stream":
        print("conn", peer[0], flush=True)
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
        continue
    try:
        conn.sendall((peer[0] + "\n").encode())
    except OSError:
        pass
    finally:
        conn.close()
"""

_HTTP_GET = r"""
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as resp:
        sys.stdout.write(resp.read().decode("utf-8", "replace"))
except Exception as exc:
    sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
    sys.exit(1)
"""

_TCP_READ = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    sys.stdout.write(data.decode("utf-8", "replace"))
except Exception as exc:
    sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
    sys.exit(1)
"""


def start_echo_server(nsenter: list[str], port: int, bind: str = "0.0.0.0",
                      stream: bool = False) -> subprocess.Popen[bytes]:
    """A TCP server (behind ``nsenter``) answering each connection with the peer's address and a newline;
    returns once it listens. ``stream``: instead, each connection stays open and gets back what it sends
    (a long-lived connection), and the server prints ``conn <peer address>`` for each on its stdout."""
    proc = subprocess.Popen([*nsenter, sys.executable, "-c", ECHO_SERVER, bind, str(port),
                             "stream" if stream else "peer"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=clean_env(), start_new_session=True)
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    line = proc.stdout.readline() if ready else b""  # type: ignore[union-attr]
    if line.strip() != b"ready":
        stop_group(proc, 2)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""  # type: ignore[union-attr]
        raise LabError(f"echo server {' '.join(nsenter)} :{port} did not start: {err}")
    return proc


def tcp_read(nsenter: list[str], host: str, port: int, timeout: float = 5) -> str | None:
    """Connect (behind ``nsenter``) and read until the peer closes; the data, or None on failure."""
    proc = subprocess.run([*nsenter, sys.executable, "-c", _TCP_READ, host, str(port), str(timeout)],
                          capture_output=True, text=True, timeout=timeout + 10, env=clean_env())
    return proc.stdout if proc.returncode == 0 else None


def published_ports_of(run: Callable[..., str], iptables_save: str) -> set[tuple[str, str, int]]:
    """(protocol, host address or "", host port) of every port multinic's firewall publishes, read with
    ``run(*command) -> stdout`` in the host: DNAT rules of its iptables buckets, elements of its nftables maps."""
    out: set[tuple[str, str, int]] = set()
    for line in run(iptables_save, "-t", "nat").splitlines():
        m = re.match(r"-A MULTINIC-DNAT-\S+ (?:-d (\S+)/\d+ )?-p (\w+) .*--dport (\d+) -j DNAT", line)
        if m:
            out.add((m.group(2), m.group(1) or "", int(m.group(3))))
    for family in ("ip", "ip6"):
        text = run("nft", "-j", "list", "table", family, "multinic").strip()
        for item in json.loads(text)["nftables"] if text.startswith("{") else ():
            for key, _data in (item.get("map") or {}).get("elem", []):
                parts = key["concat"]
                host, proto, port = parts if len(parts) == 3 else ("", *parts)
                out.add((proto, host, int(port)))
    return out


class Probes:
    """Mixin of :class:`tests.lab.Lab` (needs ``run``, ``host``, ``nsenter``)."""

    def init_probes(self) -> None:
        self._background: list[subprocess.Popen[bytes]] = []
        self._counters = 0

    def http_get(self, ns: str, url: str, timeout: float = 5) -> str | None:
        """GET ``url`` from a lab namespace (python urllib, no proxy); body, or None on any failure."""
        proc = self.run(ns, sys.executable, "-c", _HTTP_GET, url, str(timeout), check=False,  # type: ignore[attr-defined]
                        timeout=timeout + 10)
        return proc.stdout if proc.returncode == 0 else None

    def tcp_read(self, ns: str, host: str, port: int, timeout: float = 5) -> str | None:
        return tcp_read(self.nsenter(ns), host, port, timeout)  # type: ignore[attr-defined]

    def serve_peer_echo(self, ns: str, port: int, bind: str = "0.0.0.0") -> subprocess.Popen[bytes]:
        """The echo server in a lab namespace (stopped with the lab, or by :meth:`stop_background`)."""
        proc = start_echo_server(self.nsenter(ns), port, bind)  # type: ignore[attr-defined]
        self._background.append(proc)
        return proc

    def stop_background(self) -> None:
        while self._background:
            stop_group(self._background.pop(), 5)

    def add_counter(self, ns: str, *match: str, table: str = "raw", chain: str = "PREROUTING") -> Callable[[], int]:
        """A counting-only iptables rule with ``match`` in ``chain`` of ``table`` of ``ns`` (meant for the
        routers and clients: on the host it would show in ``dump_host_state``); returns its packet count
        reader. Removed with the namespace."""
        self._counters += 1
        tag = f"mn-lab-counter-{self._counters}"
        self.run(ns, "iptables", "-w", "-t", table, "-A", chain, *match, "-m", "comment",  # type: ignore[attr-defined]
                 "--comment", tag)

        def read() -> int:
            out = self.run(ns, "iptables-save", "-c", "-t", table).stdout  # type: ignore[attr-defined]
            for line in out.splitlines():
                if f"--comment {tag}" in line or f'--comment "{tag}"' in line:
                    m = re.match(r"\[(\d+):\d+\]", line)
                    if m:
                        return int(m.group(1))
            raise LabError(f"counter {tag} not found in {ns}:\n{out}")

        return read

    def reboot_wipe(self) -> None:
        """What a reboot takes from the host (dockerd stopped first): /run's xtables lock, every kernel
        object multinic tagged (links with a ``multinic:`` alias, routes and rules of protocol 211 of both
        families, ``MULTINIC-*`` chains and the jumps into them, in iptables and ip6tables, its nftables
        tables), Engine 29's tables (which its start writes again), and the IPv6 settings it changed (back to
        the kernel's defaults: forwarding 0, accept_ra 1)."""
        self.host_path("/run/xtables.lock").unlink(missing_ok=True)  # type: ignore[attr-defined]
        save = self.iptables_save  # type: ignore[attr-defined]
        save6 = save.replace("iptables", "ip6tables")
        ours = "grep -v -e '^:MULTINIC-' -e '^-A MULTINIC-' -e ' -j MULTINIC-'"
        self.sh(self.host_ns, f"""
            for l in $(ip -o link | awk -F': ' '/alias multinic:/ {{print $2}}' | cut -d@ -f1); do
                ip link del "$l"
            done
            while ip -4 rule del proto 211 2>/dev/null; do :; done
            while ip -6 rule del proto 211 2>/dev/null; do :; done
            ip -4 route flush table all proto 211
            ip -6 route flush table all proto 211
            {save} | {ours} | {save.replace('save', 'restore')}
            {save6} | {ours} | {save6.replace('save', 'restore')}
            for t in "ip multinic" "ip6 multinic" "ip docker-bridges" "ip6 docker-bridges"; do
                nft delete table $t 2>/dev/null || true
            done
            sysctl -qw net.ipv6.conf.all.forwarding=0 net.ipv6.conf.eth0.accept_ra=1 net.ipv6.conf.eth1.accept_ra=1
        """)

    def flush_multinic_chain(self, table: str, chain: str) -> None:
        """What another tool does to multinic's rules: one of its chains emptied, whichever backend wrote it
        (``iptables -t TABLE -F CHAIN``, or ``nft flush chain`` in its own table)."""
        script = (f"{self.iptables_save.replace('-save', '')} -w -t {table} -F {chain} 2>/dev/null; "  # type: ignore[attr-defined]
                  f"nft flush chain ip multinic {chain} 2>/dev/null; true")
        self.sh(self.host_ns, script)  # type: ignore[attr-defined]

    def published_ports(self) -> set[tuple[str, str, int]]:
        """(protocol, host address or "", host port) of every port multinic's firewall publishes in the
        lab's host, whichever backend wrote it: DNAT rules of its iptables buckets, elements of its
        nftables maps."""
        return published_ports_of(lambda *cmd: self.host(*cmd, check=False).stdout,  # type: ignore[attr-defined]
                                  self.iptables_save)  # type: ignore[attr-defined]

    def multinic_objects(self) -> list[str]:
        """Every kernel object of the host that multinic tagged (links with a ``multinic:`` alias, routes and
        rules of protocol 211 of both families, ``MULTINIC-*`` chains and the jumps into them, in iptables and
        ip6tables, the native backend's nftables tables): empty when none is left, even
        where Docker's own objects changed (a dockerd restart renames its veths and rewrites its rules)."""
        host = self.host  # type: ignore[attr-defined]
        links = [ln.strip() for ln in host("ip", "-o", "-d", "link").stdout.splitlines() if "alias multinic:" in ln]
        rules = [ln for family in ("-4", "-6") for ln in host("ip", family, "rule").stdout.splitlines()
                 if "proto 211" in ln]
        routes = [ln for family in ("-4", "-6")
                  for ln in host("ip", family, "route", "show", "table", "all", "proto", "211").stdout.splitlines()]
        save = self.iptables_save  # type: ignore[attr-defined]
        chains = [ln for tool in (save, save.replace("iptables", "ip6tables")) for ln in host(tool).stdout.splitlines()
                  if "MULTINIC" in ln or "multinic" in ln]
        tables = [ln for ln in host("nft", "list", "tables", check=False).stdout.splitlines() if "multinic" in ln]
        return [*links, *rules, *routes, *chains, *tables]

    def dump_host_state(self, tables: tuple[str, ...] = ("filter", "nat", "mangle")) -> str:
        """The host's routing and firewall, both families, normalised, for byte-identical before/after
        comparisons.

        ``ip rule`` as is; ``ip route show table all`` sorted, without kernel-volatile bits (the lifetimes
        of routes learned from router advertisements); ``iptables-save`` and ``ip6tables-save`` per table
        without counters, chains sorted by name (rule order within a chain kept), a table of nothing but
        empty ACCEPT built-ins shown as empty; links and addresses sorted; the IPv6 settings multinic
        changes (forwarding, accept_ra of the NICs).
        A removed endpoint's veth is deleted right after the response (retired with the alias
        ``multinic:gone:<id>``): the dump waits until none is left, as a user would see the host."""
        host = self.host  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while "alias multinic:gone:" in host("ip", "-o", "link").stdout and time.monotonic() < deadline:
            time.sleep(0.05)
        out = []
        for family in ("-4", "-6"):
            out += [f"## ip {family} rule", host("ip", family, "rule").stdout.rstrip()]
            routes = []
            for line in host("ip", family, "route", "show", "table", "all").stdout.splitlines():
                if not line.strip() or line.startswith(("cache", " ")):
                    continue
                routes.append(" ".join(re.sub(r"\s+(expires|age)\s+\S+", "", line).split()))
            out += [f"## ip {family} route show table all", *sorted(routes)]
        for tool in ("iptables", "ip6tables"):
            for table in tables:
                out += [f"## {tool}-save -t {table}", *self._iptables_table(table, tool)]
        out += ["## nft -s list ruleset (but iptables-nft's tables)",
                *engine29.normalise_nft(host("nft", "-s", "list", "ruleset").stdout)]
        links = sorted(" ".join(ln.split()) for ln in host("ip", "-br", "link").stdout.splitlines() if ln.strip())
        addrs = sorted(" ".join(ln.split()) for ln in host("ip", "-br", "addr").stdout.splitlines() if ln.strip())
        settings = host("sh", "-c", "grep . /proc/sys/net/ipv6/conf/all/forwarding "
                        "/proc/sys/net/ipv6/conf/eth*/accept_ra").stdout.split()
        out += ["## ip -br link", *links, "## ip -br addr", *addrs, "## IPv6 settings", *settings]
        return "\n".join(out) + "\n"

    def _iptables_table(self, table: str, tool: str = "iptables") -> list[str]:
        save = self.iptables_save.replace("iptables", tool)  # type: ignore[attr-defined]
        proc = self.host(save, "-t", table, check=False)  # type: ignore[attr-defined]
        policies: dict[str, str] = {}
        rules: dict[str, list[str]] = {}
        for line in proc.stdout.splitlines():
            line = line.strip()
            if line.startswith(":"):
                chain, policy = line[1:].split()[:2]
                policies[chain] = policy
                rules.setdefault(chain, [])
            elif line.startswith("-A ") or (line.startswith("[") and " -A " in line):
                rule = re.sub(r"^\[\d+:\d+\]\s*", "", line)
                rules.setdefault(rule.split()[1], []).append(rule)
        builtin = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
        if all(c in builtin and policies.get(c, "ACCEPT") == "ACCEPT" and not r for c, r in rules.items()):
            return ["(empty)"]
        return [*(f":{chain} {policies.get(chain, '-')}" for chain in sorted(rules)),
                *(rule for chain in sorted(rules) for rule in rules[chain])]
