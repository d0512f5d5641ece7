"""A swarm of multi-homed hosts: three labs (:class:`tests.lab.Lab`, each its own namespaces, dockerd,
data-root, /run and /var/lib) joined by a cluster link, one manager and two workers.

::

    <p>1-host (manager)  cl0 192.168.200.11 ─┐
    <p>2-host (worker)   cl0 192.168.200.12 ─┼─ br0 in <p>-lan (the cluster LAN; the registry 192.168.200.250:5000)
    <p>3-host (worker)   cl0 192.168.200.13 ─┘

Each node keeps its lab's eth0 (main default route, r0, c0) and its parent NIC (r1, c1) with the lab's
addresses: every node is the same multi-homed host, each its own island. On the last node the parent is
named ``wan1``, not ``eth1``, so the per-node config-only network really differs. Swarm traffic (2377,
7946, 4789) crosses the cluster link only. Node names are ``<p><i>`` (``sw201``); each node carries the
label ``mn.node=<name>`` for placement constraints (the nodes share the machine's hostname).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from . import IMAGE, Lab
from .registry import Registry, publish_plugin
from .topology import NETNS_DIR, LabError, exclusive_lock, ip, pids_mentioning, wait_for

CLUSTER_PREFIX = "192.168.200"  # the cluster LAN, a /24
REGISTRY_ADDR = f"{CLUSTER_PREFIX}.250:5000"
CLUSTER_DEV = "cl0"


class Node(Lab):
    """A lab host that is a swarm node: a cluster link address, a parent NIC name, and a dockerd that
    trusts the cluster's registry (plain HTTP on the LAN, as ``--insecure-registry`` allows)."""

    def __init__(self, name: str, engine: str, index: int, parent: str = "eth1", driver: str = "multinic") -> None:
        super().__init__(name, engine=engine, driver=driver)
        self.index = index
        self.parent = parent
        self.cluster_addr = f"{CLUSTER_PREFIX}.{10 + index}"
        self.node_id = ""

    def start_dockerd(self, extra_args: Any = (), timeout: float = 90) -> None:
        super().start_dockerd(["--insecure-registry", REGISTRY_ADDR, *extra_args], timeout)

    def rename_parent(self) -> None:
        """eth1 becomes ``self.parent`` (its addresses, rp_filter and the connected routes stay: a static
        IPv6 address would go with the link down without ``keep_addr_on_down``); returns once the host has
        learned its IPv6 default route through the renamed NIC again (router advertisements)."""
        if self.parent == "eth1":
            return
        self.sysctl(self.host_ns, "net.ipv6.conf.eth1.keep_addr_on_down", "1")
        self.host("ip", "link", "set", "eth1", "down")
        self.host("ip", "link", "set", "eth1", "name", self.parent)
        self.host("ip", "link", "set", self.parent, "up")
        learned = f"dev {self.parent} proto ra"
        if not wait_for(lambda: learned in self.host("ip", "-6", "route", "show", "default").stdout, 30, 0.2):
            raise LabError(f"{self.name}: no IPv6 default route learned on {self.parent} after its rename")

    def __repr__(self) -> str:
        return f"Node({self.name!r}, engine={self.engine!r}, parent={self.parent!r})"


class Swarm:
    """``with Swarm("sw20", "20.10") as swarm``: the LAN, three nodes with dockerd, a registry on the LAN,
    the swarm formed (``swarm.manager``, ``swarm.workers``, ``swarm.nodes``). ``down()`` removes it all,
    also after a crash (same prefix)."""

    PARENTS = ("eth1", "eth1", "wan1")

    def __init__(self, prefix: str, engine: str, driver: str = "multinic") -> None:
        if len(prefix) > 5:
            raise ValueError(f"swarm prefix {prefix!r}: at most 5 characters (node names add one digit)")
        self.prefix = prefix
        self.engine = engine
        self.nodes = [Node(f"{prefix}{i}", engine, i, parent, driver)
                      for i, parent in enumerate(self.PARENTS, start=1)]
        self.image = f"{REGISTRY_ADDR}/{IMAGE}"
        self.lan_ns = f"{prefix}-lan"
        self.dir = Path(f"/tmp/multinic-swarm-{prefix}")
        self.registry = Registry(self.lan_nsenter(), self.dir / "registry", REGISTRY_ADDR)
        self._lock: int | None = None
        self.timings: dict[str, float] = {}
        self.baseline: dict[str, str] = {}  # node name → its dump_host_state() as a test wants it back

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    def lan_nsenter(self) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR}/{self.lan_ns}"]

    def lan(self, *cmd: str) -> str:
        proc = subprocess.run([*self.lan_nsenter(), *cmd], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise LabError(f"[{self.lan_ns}] {' '.join(cmd)}: {proc.stderr.strip()}")
        return proc.stdout

    # -- building ----------------------------------------------------------------------------------------
    def __enter__(self) -> Swarm:
        with contextlib.ExitStack() as undo:  # a swarm half built is removed
            undo.callback(self.down)
            self.up()
            undo.pop_all()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()

    def up(self) -> None:
        t0 = time.monotonic()
        if self._lock is None:
            self._lock = exclusive_lock(f"swarm-{self.prefix}.lock",
                                        f"a swarm with prefix {self.prefix!r} is in use by another process")
        self._remove_lan()
        self.dir.mkdir(parents=True)
        ip("netns", "add", self.lan_ns)
        self.lan("ip", "link", "set", "lo", "up")
        self.lan("ip", "link", "add", "br0", "type", "bridge")
        self.lan("ip", "link", "set", "br0", "up")
        self.lan("ip", "addr", "add", f"{REGISTRY_ADDR.split(':')[0]}/24", "dev", "br0")
        for node in self.nodes:
            node.up()
            port = f"{self.prefix}p{node.index}"
            ip("-n", node.host_ns, "link", "add", CLUSTER_DEV, "type", "veth", "peer", "name", port, "netns",
               self.lan_ns)
            node.host("ip", "addr", "add", f"{node.cluster_addr}/24", "dev", CLUSTER_DEV)
            node.host("ip", "link", "set", CLUSTER_DEV, "up")
            self.lan("ip", "link", "set", port, "master", "br0", "up")
            node.rename_parent()
        self.timings["topology"] = time.monotonic() - t0
        for node in self.nodes:
            node.start_dockerd()
        self.timings["dockerd"] = time.monotonic() - t0
        self.form()
        self.timings["formed"] = time.monotonic() - t0

    def form(self) -> None:
        """``swarm init`` on the manager, ``swarm join`` of the workers, all on the cluster link; each
        node labelled ``mn.node=<name>``."""
        m = self.manager
        m.docker("swarm", "init", "--advertise-addr", m.cluster_addr, "--listen-addr", f"{m.cluster_addr}:2377",
                 timeout=120)
        token = m.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        for w in self.workers:
            w.docker("swarm", "join", "--token", token, "--advertise-addr", w.cluster_addr, "--listen-addr",
                     f"{w.cluster_addr}:2377", f"{m.cluster_addr}:2377", timeout=120)
        for node in self.nodes:
            node.node_id = node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
            m.docker("node", "update", "--label-add", f"mn.node={node.name}", node.node_id)
        ready = wait_for(lambda: self.ready_nodes() == len(self.nodes), 60, 0.5)
        if not ready:
            raise LabError(f"swarm nodes not ready:\n{m.docker('node', 'ls').stdout}")

    def ready_nodes(self) -> int:
        out = self.manager.docker("node", "ls", "--format", "{{.Status}} {{.Availability}}").stdout.split("\n")
        return sum(1 for line in out if line.startswith("Ready"))

    def node(self, name_or_id: str) -> Node:
        return next(n for n in self.nodes if name_or_id in (n.name, n.node_id))

    # -- the managed plugin, as an operator installs it on every node --------------------------------------
    def start_registry(self, plugin_dir: Path, tags: tuple[str, ...] = ("1",)) -> list[str]:
        """The registry on the LAN, holding the plugin built in ``plugin_dir`` as ``multinic:<tag>`` and the
        lab's busybox image as :attr:`image` (a task's image is pulled from a registry: without one each
        task waits for a pull from Docker Hub to time out)."""
        self.registry.start(lambda url: self.manager.http_get(self.manager.host_ns, url) is not None)
        refs = [f"{REGISTRY_ADDR}/multinic:{tag}" for tag in tags]
        publish_plugin(self.manager, plugin_dir, refs)
        self.manager.docker("tag", IMAGE, self.image)
        self.manager.docker("push", self.image, timeout=300)
        return refs

    def install_plugin(self, ref: str, alias: str = "multinic") -> None:
        """``docker plugin install --grant-all-permissions --alias multinic REF`` on every node."""
        for node in self.nodes:
            node.docker("plugin", "install", "--grant-all-permissions", "--alias", alias, ref, timeout=300)

    # -- services ------------------------------------------------------------------------------------------
    def create_service(self, name: str, *args: str, cmd: tuple[str, ...] = ("sleep", "3600")) -> None:
        """``docker service create`` on the manager (detached; the image from the LAN's registry; a task
        stops at once: busybox's PID 1 ignores SIGTERM)."""
        self.manager.docker("service", "create", "-d", "--name", name, "--stop-grace-period", "1s", *args,
                            self.image, *cmd)

    @staticmethod
    def running(node: Node, service: str) -> list[str]:
        """Ids of ``service``'s running containers on ``node``."""
        return node.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}").stdout.split()

    def placement(self, service: str) -> dict[str, list[str]]:
        """Node name → ids of ``service``'s running containers there."""
        return {node.name: self.running(node, service) for node in self.nodes}

    def wait_tasks(self, service: str, count: int, timeout: float = 120, off: str = "") -> dict[str, list[str]]:
        """The placement once ``count`` containers of ``service`` run (none on node ``off``), or LabError
        with ``service ps``."""
        def placed() -> dict[str, list[str]] | None:
            now = self.placement(service)
            return now if sum(map(len, now.values())) == count and not now.get(off) else None

        found = wait_for(placed, timeout, 1.0)
        if not found:
            ps = self.manager.docker("service", "ps", "--no-trunc", service, check=False)
            raise LabError(f"{service}: not {count} running task(s) after {timeout}s: {self.placement(service)}\n"
                           f"{ps.stdout}{ps.stderr}")
        return found

    def remove_services(self, *names: str) -> None:
        for name in names:
            self.manager.docker("service", "rm", name, check=False)
        wait_for(lambda: not any(ids for name in names for ids in self.placement(name).values()), 60, 1.0)

    # -- removing --------------------------------------------------------------------------------------------
    def down(self) -> None:
        errors = []
        for node in self.nodes:
            try:
                node.down()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append(str(exc))
        self.registry.stop()
        self._remove_lan()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if errors:
            raise LabError(f"swarm {self.prefix} left things behind:\n" + "\n".join(errors))

    def _remove_lan(self) -> None:
        """The LAN namespace and the swarm's directory (the registry's processes first)."""
        for pid in pids_mentioning(f"{self.dir}/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if Path(NETNS_DIR, self.lan_ns).exists():
            subprocess.run(["ip", "netns", "del", self.lan_ns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        found = [x for node in self.nodes for x in node.leftovers()]
        if Path(NETNS_DIR, self.lan_ns).exists():
            found.append(f"netns {self.lan_ns}")
        if self.dir.exists():
            found.append(f"dir {self.dir}")
        return found
