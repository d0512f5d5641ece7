"""A fake multi-homed Docker host built from namespaces, for end-to-end tests: :class:`Lab` is the
topology (:mod:`.topology`), its dockerd (:mod:`.dockerd`), the plugin process (:mod:`.plugin`) and
traffic and state probes (:mod:`.probes`). Run as root; nothing of the machine's own is touched."""

from __future__ import annotations

from typing import Any

from .dockerd import BUSYBOX, COMPOSE, DOCKER_CLI, DOCKERD, ENGINES, IMAGE, Dockerd
from .plugin import PLUGIN_DIR, REPO_ROOT, PluginProcess, connectable
from .probes import Probes, start_echo_server, tcp_read
from .topology import (
    C0_ADDR,
    C0_ADDR6,
    C0_NET,
    C1_ADDR,
    C1_ADDR6,
    C1_NET,
    ETH0_NET,
    ETH0_NET6,
    ETH1_NET,
    ETH1_NET6,
    HOST6_ETH0,
    HOST6_ETH1,
    HOST_ETH0,
    HOST_ETH1,
    LAB_TOOLS,
    LOCK_DIR,
    NETNS_DIR,
    R0_CLIENT_SIDE,
    R0_HOST_SIDE,
    R1_CLIENT_SIDE,
    R1_HOST_SIDE,
    ROUTER_LL,
    LabError,
    Topology,
    lab_tool,
    tool_env,
    wait_for,
)

__all__ = [
    "BUSYBOX", "C0_ADDR", "C0_ADDR6", "C0_NET", "C1_ADDR", "C1_ADDR6", "C1_NET", "COMPOSE", "ETH0_NET6", "ETH1_NET6",
    "HOST6_ETH0", "HOST6_ETH1", "ROUTER_LL", "DOCKER_CLI", "DOCKERD", "ENGINES", "ETH0_NET",
    "ETH1_NET", "HOST_ETH0", "HOST_ETH1", "IMAGE", "LAB_TOOLS", "LOCK_DIR", "NETNS_DIR", "PLUGIN_DIR",
    "R0_CLIENT_SIDE", "R0_HOST_SIDE", "R1_CLIENT_SIDE", "R1_HOST_SIDE", "REPO_ROOT", "Lab", "LabError", "Topology",
    "connectable", "lab_tool", "start_echo_server", "tcp_read", "tool_env", "wait_for",
]


class Lab(Topology, Dockerd, PluginProcess, Probes):
    """One fake multi-homed host with its own dockerd: ``Lab(name, engine="20.10"|"28.5", driver="multinic")``;
    ``docker_firewall="nftables"`` (engine 28.5): Engine 29's nftables mode, simulated (:mod:`.engine29`).

    ``name`` (<= 6 chars, [a-z0-9]) prefixes every namespace and names the work dir
    ``/tmp/multinic-lab-<name>/``; the lab's host has its own /run and /var/lib there, so labs never
    share namespaces, sockets, state or data-roots, and none touches the machine's. ``with Lab(...)``
    builds it and starts dockerd; ``down()`` removes everything, also after a crash (same name)."""

    def __init__(self, name: str, engine: str = "20.10", driver: str = "multinic", *, rp_filter: int = 2,
                 iptables: str = "nft", docker_firewall: str = "iptables") -> None:
        Topology.__init__(self, name, rp_filter=rp_filter)
        self.init_dockerd(engine, iptables, docker_firewall)
        self.init_plugin(driver)
        self.init_probes()

    def __enter__(self) -> Lab:
        try:
            self.up()
            self.start_dockerd()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, engine={self.engine!r}, driver={self.driver!r})"

    def remove_stale(self) -> None:
        self.down(release=False)

    def down(self, release: bool = True) -> None:
        """Plugin, background servers, dockerd (and its containers), processes, namespaces, cgroups,
        work dir. Safe after a partial setup, after a crash (same name) and when called twice; raises
        LabError at the end if something could not be removed. ``MULTINIC_LAB_LOGS=<dir>``: the lab's
        logs are copied to ``<dir>/<name>/`` first (CI artifacts)."""
        import os
        import shutil
        from pathlib import Path

        self._lock_name()  # another live process holding this lab name owns those namespaces
        errors: list[str] = []
        for what, step in (("stop plugin", self.stop_plugin), ("stop background servers", self.stop_background),
                           ("stop dockerd", self.stop_dockerd)):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append(f"{what}: {exc}")
        dest = os.environ.get("MULTINIC_LAB_LOGS")
        if dest and self.dir.exists():
            target = Path(dest) / self.name
            target.mkdir(parents=True, exist_ok=True)
            for log in self.dir.glob("*.log"):
                shutil.copy2(log, target / log.name)
        self.down_topology(errors)
        try:
            self.remove_cgroups()
        except OSError as exc:
            errors.append(f"cgroups: {exc}")
        if release:
            self.release_name()
        if errors:
            raise LabError(f"{self!r}.down() left things behind:\n" + "\n".join(errors))
