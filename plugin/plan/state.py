"""Persisted networks and endpoints: one JSON file, file-locked, written atomically (a crash leaves the
old or the new file, whole), with the previous one kept as ``state.json.bak``. Nothing another worker
needs is kept in process memory: the :class:`Store` only caches the file's last parse and each record's
text, checked against the file's bytes. An unreadable file is never guessed at (:class:`StateCorrupt`).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import Failure

STATE_VERSION = 1
UNREADABLE = (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError)  # not multinic state


class StateCorrupt(Failure):
    """The state file exists but cannot be read as multinic state."""


class StateLost(Failure):
    """No state file, but the kernel holds multinic's objects: nothing may be removed or added until
    the state is rebuilt from dockerd."""


@dataclass(frozen=True)
class PublishedPort:
    """A port the plugin really publishes. ``host_ip``: an address, ``""`` (none given: the parent's
    addresses, of the network's families, as they are now), or a family's "any" address (``0.0.0.0``,
    ``::``: Docker's "every address of that family")."""

    proto: str
    host_ip: str
    host_port: int
    container_port: int

    def lands_on(self, address: str) -> bool:
        """Whether traffic to ``address`` (a concrete address, or a family's "any") meets this port's."""
        mine, theirs = self.host_ip, address
        if not mine or not theirs or mine == theirs:
            return True
        return (mine in ANY_ADDRESS and (":" in theirs) == (":" in mine)) or (
            theirs in ANY_ADDRESS and (":" in mine) == (":" in theirs))


ANY_ADDRESS = ("0.0.0.0", "::")


@dataclass(frozen=True)
class NetworkRecord:
    id: str
    bridge: str
    subnet: str  # "" for an IPv6-only network
    gateway: str  # CIDR form, e.g. 10.10.0.1/24
    internal: bool = False
    parent: str | None = None
    parent_gateway: str | None = None
    gateway_source: str = ""  # how parent_gateway was chosen (plan.network.parent_next_hop)
    table: int | None = None
    mark_slot: int | None = None
    mtu: int = 1500
    masquerade: bool = True
    gw_priority: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0  # unix time; garbage collection leaves young records alone
    subnet6: str = ""  # "" for an IPv4-only network
    gateway6: str = ""  # CIDR form, e.g. fd00:10::1/64
    parent_gateway6: str | None = None
    gateway6_source: str = ""
    ingress_replies: bool = False  # replies from docker_gwbridge take the parent's mark back (swarm's mesh)

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(v for v, subnet in ((4, self.subnet), (6, self.subnet6)) if subnet)


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
    address6: str = ""  # CIDR; "" without IPv6


@dataclass(frozen=True)
class ParentRecord:
    """What the plugin changed on a parent NIC, to put back when its last network goes."""

    rp_filter_before: int | None = None


@dataclass
class State:
    networks: dict[str, NetworkRecord] = field(default_factory=dict)
    endpoints: dict[str, EndpointRecord] = field(default_factory=dict)
    parents: dict[str, ParentRecord] = field(default_factory=dict)
    # IPv6 settings of the host multinic changed (sysctl path → the value before), put back with the
    # last IPv6 network: net/ipv6/conf/all/forwarding, and accept_ra of the NICs that needed 2 for it.
    restore6: dict[str, str] = field(default_factory=dict)

    def copy(self) -> State:
        """A copy a verb can keep as "before" while it changes this one (records are frozen)."""
        return State(networks=dict(self.networks), endpoints=dict(self.endpoints), parents=dict(self.parents),
                     restore6=dict(self.restore6))

    def has_ipv6(self) -> bool:
        return any(net.subnet6 for net in self.networks.values())

    def endpoints_of(self, network_id: str) -> list[EndpointRecord]:
        return [ep for ep in self.endpoints.values() if ep.network_id == network_id]

    def networks_on(self, parent: str) -> list[NetworkRecord]:
        return [net for net in self.networks.values() if net.parent == parent]

    def parent_names(self) -> set[str]:
        """The NICs networks are bound to."""
        return {net.parent for net in self.networks.values() if net.parent}

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "networks": {k: _plain(v) for k, v in sorted(self.networks.items())},
            "endpoints": {k: _plain(v) for k, v in sorted(self.endpoints.items())},
            "parents": {k: _plain(v) for k, v in sorted(self.parents.items())},
            "restore6": dict(sorted(self.restore6.items())),
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
            restore6={str(k): str(v) for k, v in (data.get("restore6") or {}).items()},
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


def _dumps(data: Any) -> str:
    # No indent: only then does json use its C encoder (5-10x faster on a full host).
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def write_json_atomically(path: Path, data: Any) -> None:
    """Temp file, fsync, rename, fsync the directory: a reader (or a crash) sees old or new, whole."""
    write_text_atomically(path, _dumps(data))


def write_text_atomically(path: Path, text: str) -> None:
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
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
        self._parsed: tuple[bytes, State] | None = None  # the file's bytes → what they parse to
        self._texts: dict[int, tuple[Any, str, str]] = {}  # id(record) → (record, key, JSON text)

    def exists(self) -> bool:
        """Whether a state file exists: without one, the kernel's tagged objects are not known to be
        stale (the state may have been lost), and the whole-host writer must not remove them."""
        return self.path.exists()

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def backup_path(self) -> Path:
        return self.directory / "state.json.bak"

    @staticmethod
    def _read(path: Path) -> State:
        """FileNotFoundError if absent; ValueError (and kin) if it is not multinic state."""
        with open(path, "rb") as fh:
            return Store._parse(fh.read())

    @staticmethod
    def _parse(raw: bytes) -> State:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"top level is {type(data).__name__}, not an object")
        if int(data.get("version", STATE_VERSION)) > STATE_VERSION:
            raise ValueError(f"written by a newer multinic (state version {data['version']})")
        return State.from_json(data)

    def load(self) -> State:
        """Read without the lock (for status): atomic renames make any read whole."""
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
            cached = self._parsed
            if cached is None or cached[0] != raw:
                cached = self._parsed = (raw, self._parse(raw))
            return cached[1].copy()
        except FileNotFoundError:
            return State()
        except UNREADABLE as exc:
            raise StateCorrupt(
                f"multinic state file {self.path} is unreadable ({type(exc).__name__}: {str(exc)[:120]}) and "
                "multinic will not act on networks it cannot see; restart the plugin: it sets the file aside "
                f"and rebuilds the state from dockerd (do not copy {self.backup_path.name} over it: it is one "
                "save older)"
            ) from None

    def save(self, state: State) -> None:
        if self.path.exists():  # keep the version being replaced: the last known-good state
            tmp = self.directory / f".{self.backup_path.name}.{os.getpid()}"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.link(self.path, tmp)
            os.replace(tmp, self.backup_path)
        text = self._serialise(state)
        write_text_atomically(self.path, text)
        self._parsed = (text.encode("utf-8"), state.copy())

    def _serialise(self, state: State) -> str:
        """``state.to_json()`` as :func:`write_json_atomically` writes it, re-using the text of
        every record serialised before (records are immutable; the cache holds each record it
        keys by ``id``, so an id is never reused while cached)."""
        texts: dict[int, tuple[Any, str, str]] = {}

        def section(records: dict[str, Any]) -> str:
            parts = []
            for key in sorted(records):
                record = records[key]
                hit = self._texts.get(id(record))
                if hit is None or hit[0] is not record or hit[1] != key:
                    hit = (record, key, f"{json.dumps(key)}:{_dumps(_plain(record))}")
                texts[id(record)] = hit
                parts.append(hit[2])
            return "{" + ",".join(parts) + "}"

        text = (
            f'{{"endpoints":{section(state.endpoints)},"networks":{section(state.networks)},'
            f'"parents":{section(state.parents)},"restore6":{_dumps(dict(sorted(state.restore6.items())))},'
            f'"version":{STATE_VERSION}}}'
        )
        self._texts = texts
        return text

    def _keep_copy(self) -> Path:
        """The unreadable file kept as ``state.json.corrupt-<time>`` (a second name: the file itself is
        still there, whenever this process is killed)."""
        kept = self.directory / f"state.json.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        kept.unlink(missing_ok=True)
        os.link(self.path, kept)
        return kept

    def set_aside(self) -> str:
        """Move an unreadable state file out of the way (``state.json.corrupt-<time>``); its name."""
        kept = self._keep_copy()
        self.path.unlink()
        return kept.name

    def check(self) -> tuple[bool, str | None]:
        """At start: (usable, error). An unreadable file is not replaced by its backup, which may lack what
        the last verb made: the caller sets it aside and the state is rebuilt from dockerd."""
        try:
            self.load()
            return True, None
        except StateCorrupt as exc:
            return False, str(exc)

    def backup(self) -> State | None:
        """The last good copy (the state before the last save), None if there is none or it is unreadable:
        what dockerd and the kernel cannot tell when the state is rebuilt (values to put back)."""
        try:
            return self._read(self.backup_path)
        except (OSError, *UNREADABLE):
            return None

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
