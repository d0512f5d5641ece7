"""Persisted networks and endpoints: one JSON file, file-locked, written atomically.

Every verb runs as ``with store.locked() as state: ...; store.save(state)``, so gunicorn
workers and parallel dockerd calls see one consistent state and a plugin killed at any
instant leaves either the old or the new file, never half of one. Nothing another worker
needs is kept in process memory.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

STATE_VERSION = 1


@dataclass(frozen=True)
class PublishedPort:
    """A port the plugin really publishes: host_ip ``""`` means every local address."""

    proto: str
    host_ip: str
    host_port: int
    container_port: int


@dataclass(frozen=True)
class NetworkRecord:
    id: str
    bridge: str
    subnet: str
    gateway: str  # CIDR form, e.g. 10.10.0.1/24
    internal: bool = False
    parent: str | None = None
    parent_gateway: str | None = None
    table: int | None = None
    mark_slot: int | None = None
    mtu: int = 1500
    masquerade: bool = True
    gw_priority: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0  # unix time; garbage collection leaves young records alone


@dataclass(frozen=True)
class EndpointRecord:
    id: str
    network_id: str
    address: str  # CIDR
    mac: str
    host_veth: str
    peer_veth: str
    gw_priority: int | None = None
    joined: bool = False
    sandbox_key: str = ""
    ports: tuple[PublishedPort, ...] = ()
    created: float = 0.0


@dataclass(frozen=True)
class ParentRecord:
    """What the plugin changed on a parent NIC, to put back when its last network goes."""

    rp_filter_before: int | None = None


@dataclass
class State:
    networks: dict[str, NetworkRecord] = field(default_factory=dict)
    endpoints: dict[str, EndpointRecord] = field(default_factory=dict)
    parents: dict[str, ParentRecord] = field(default_factory=dict)

    def endpoints_of(self, network_id: str) -> list[EndpointRecord]:
        return [ep for ep in self.endpoints.values() if ep.network_id == network_id]

    def networks_on(self, parent: str) -> list[NetworkRecord]:
        return [net for net in self.networks.values() if net.parent == parent]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "networks": {k: _plain(v) for k, v in sorted(self.networks.items())},
            "endpoints": {k: _plain(v) for k, v in sorted(self.endpoints.items())},
            "parents": {k: _plain(v) for k, v in sorted(self.parents.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        endpoints = {}
        for key, raw in (data.get("endpoints") or {}).items():
            raw = dict(raw)
            raw["ports"] = tuple(PublishedPort(**p) for p in raw.get("ports") or ())
            endpoints[key] = EndpointRecord(**raw)
        return cls(
            networks={k: NetworkRecord(**v) for k, v in (data.get("networks") or {}).items()},
            endpoints=endpoints,
            parents={k: ParentRecord(**v) for k, v in (data.get("parents") or {}).items()},
        )


def _plain(record: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` for our flat records, without its deep copies (every verb saves
    the whole state: this keeps the cost of a save flat as the host fills up)."""
    out = dict(record.__dict__)
    if "ports" in out:
        out["ports"] = [dict(p.__dict__) for p in out["ports"]]
    if "options" in out:
        out["options"] = dict(out["options"])
    return out


def write_json_atomically(path: Path, data: Any) -> None:
    """Temp file, fsync, rename, fsync the directory: a reader (or a crash) sees old or new, whole."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            # No indent: only then does json use its C encoder (5-10x faster on a full host).
            fh.write(json.dumps(data, sort_keys=True, separators=(",", ":")))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Store:
    """The state directory: ``state.json`` plus the ``lock`` file every writer holds."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "state.json"
        self.lock_path = self.directory / "lock"

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load(self) -> State:
        """Read without the lock (for status): atomic renames make any read whole."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                return State.from_json(json.load(fh))
        except FileNotFoundError:
            return State()

    def save(self, state: State) -> None:
        write_json_atomically(self.path, state.to_json())

    @contextmanager
    def locked(self) -> Iterator[State]:
        """Hold the exclusive lock for a whole verb: read, decide, reconcile, save."""
        self._ensure_dir()
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield self.load()
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
