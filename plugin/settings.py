"""Every setting of multinic, read once at start into one typed :class:`Settings`: command-line flags
first, then the environment (which is also how a managed plugin's ``docker plugin set`` reaches us),
then the defaults. The only module that reads the environment; the object is passed down."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

DEFAULT_SOCKET = "/run/docker/plugins/multinic.sock"
DEFAULT_STATE_DIR = "/var/lib/multinic"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"  # DOCKER_HOST, as the docker CLI reads it
DEFAULT_XTABLES_LOCK = "/run/xtables.lock"  # iptables' own; XTABLES_LOCKFILE overrides it, as for iptables
LOG_LEVELS = ("debug", "info", "warning", "error")
# MULTINIC_FIREWALL: native nftables (libnftables), iptables-nft (also "nft"), legacy (python-iptables),
# legacy-restore (iptables-legacy-restore); empty: chosen from the host (plugin.kernel.firewall).
FIREWALLS = ("nftables", "iptables-nft", "nft", "legacy", "legacy-restore")


@dataclass(frozen=True)
class Settings:
    state_dir: str = DEFAULT_STATE_DIR
    socket: str = DEFAULT_SOCKET
    workers: int = 1  # verbs are serialised by the state lock: a second worker only answers Health meanwhile
    log_level: str = "info"
    metrics_address: str = ""  # HOST:PORT; empty: no metrics
    firewall: str = ""  # forced backend (one of FIREWALLS); empty: chosen from the host
    docker_host: str = ""  # empty: DEFAULT_DOCKER_HOST
    xtables_lock: str = DEFAULT_XTABLES_LOCK
    # The background loops (seconds).
    check_interval: float = 2.0  # healer: routes, rules and bridges compared with the state
    firewall_check_interval: float = 15.0  # healer: our chains and jumps compared with the state
    full_interval: float = 300.0  # healer: everything re-applied, whatever it saw
    gc_interval: float = 60.0  # healer: what dockerd no longer has is forgotten...
    gc_grace: float = 120.0  # ...once this old
    resync_interval: float = 30.0  # gateway watcher: every container looked at again
    health_stale: float = 30.0  # a loop silent this long is reported hung
    fault: str = ""  # tests only: <Verb>[@<point>] pauses a verb there (plugin/ops/faults.py)
    problems: tuple[str, ...] = ()  # settings that were refused and replaced by their default

    @property
    def driver_name(self) -> str:
        """dockerd names a legacy plugin after its socket file: multinic.sock → ``multinic``."""
        return Path(self.socket).stem

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_ENV: dict[str, tuple[str, type]] = {
    "state_dir": ("MULTINIC_STATE_DIR", str),
    "socket": ("MULTINIC_SOCKET", str),
    "workers": ("MULTINIC_WORKERS", int),
    "log_level": ("LOG_LEVEL", str),
    "metrics_address": ("MULTINIC_METRICS_ADDRESS", str),
    "firewall": ("MULTINIC_FIREWALL", str),
    "docker_host": ("DOCKER_HOST", str),
    "xtables_lock": ("XTABLES_LOCKFILE", str),
    "check_interval": ("MULTINIC_CHECK_INTERVAL", float),
    "firewall_check_interval": ("MULTINIC_FIREWALL_CHECK_INTERVAL", float),
    "full_interval": ("MULTINIC_FULL_INTERVAL", float),
    "gc_interval": ("MULTINIC_GC_INTERVAL", float),
    "gc_grace": ("MULTINIC_GC_GRACE", float),
    "resync_interval": ("MULTINIC_RESYNC_INTERVAL", float),
    "health_stale": ("MULTINIC_HEALTH_STALE", float),
    "fault": ("MULTINIC_FAULT", str),
}


_CHOICES: dict[str, tuple[str, tuple[str, ...], str]] = {  # field: (what, the values it takes, what happens else)
    "log_level": ("log level", LOG_LEVELS, "using info"),
    "firewall": ("firewall backend", FIREWALLS, "chosen from the host"),
}


def docker_endpoint(url: str) -> tuple[str, tuple[str, int]]:
    """``DOCKER_HOST`` (empty: the default) → (socket path, ("", 0)) for ``unix://PATH``, ("", (host, port))
    for ``tcp://HOST:PORT``; ValueError naming the fix."""
    parts = urlsplit(url or DEFAULT_DOCKER_HOST)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme == "unix" and parts.path:
        return parts.path, ("", 0)
    if parts.scheme in ("tcp", "http") and port != -1 and not parts.path.strip("/"):
        return "", (parts.hostname or "localhost", port or 2375)
    raise ValueError("multinic reaches dockerd by unix:///PATH or tcp://HOST:PORT only")


def metrics_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all addresses) or ``[V6]:PORT`` → (host, port); ValueError naming the fix."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("give HOST:PORT, e.g. 127.0.0.1:9327")
    return host.strip("[]") or "0.0.0.0", int(port)


_SHAPES: dict[str, tuple[Callable[[str], Any], str]] = {  # field: (its parser, what happens else)
    "docker_host": (docker_endpoint, f"using {DEFAULT_DOCKER_HOST}"),
    "metrics_address": (metrics_endpoint, "metrics off"),
}


def load(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags (non-None values) over the environment over the defaults. A value that cannot be used is
    kept in ``problems`` (logged by the caller) and replaced by its default: a bad setting must never keep the plugin
    from listening (dockerd 20.10 panics at start on a managed plugin that cannot start)."""
    env = os.environ if environ is None else environ
    defaults = Settings()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for field, (name, kind) in _ENV.items():
        raw = (flags or {}).get(field)
        source = f"--{field.replace('_', '-')}"
        if raw is None or (isinstance(raw, str) and not raw.strip()):  # `--log-level ${LOG_LEVEL}`, unset
            raw, source = env.get(name, "").strip(), name
            if raw == "":
                continue
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            problems.append(f"{source}={raw!r} is not a {kind.__name__}; using {getattr(defaults, field)!r}")
            continue
        if kind in (int, float) and value <= 0:
            problems.append(f"{source}={raw!r} must be positive; using {getattr(defaults, field)!r}")
            continue
        values[field], sources[field] = value, source
    for field, (parse, instead) in _SHAPES.items():
        if field in values:
            try:
                parse(values[field])
            except ValueError as exc:
                problems.append(f"{sources[field]}={values.pop(field)!r}: {exc}; {instead}")
    for field, (what, choices, instead) in _CHOICES.items():
        value = str(values.get(field, getattr(defaults, field))).lower()
        if value and value not in choices:
            problems.append(f"{what} {value!r} unknown (use {', '.join(choices)}); {instead}")
            value = getattr(defaults, field)
        values[field] = value
    return Settings(**values, problems=tuple(problems))


def export(name: str, value: str | None) -> None:
    """Set (or, with None, remove) an environment variable for a library that reads it from there
    (prometheus_client's PROMETHEUS_MULTIPROC_DIR)."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
