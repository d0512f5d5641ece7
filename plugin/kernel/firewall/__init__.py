"""The firewall: our chains and the jumps into them as data (:mod:`.model`, :mod:`.rules`), one backend
per flavour writing them (:mod:`.restore`, :mod:`.libiptc`), and the choice of backend, which must
follow the flavour dockerd writes: on nf_tables hosts, rules in the legacy tables cannot open Docker's
FORWARD path, and the other way round."""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass

from ...errors import Failure
from ...settings import FIREWALLS, Settings
from .model import FirewallBackend, Ruleset
from .restore import RestoreBackend
from .view import View, drift


def _has_docker_chains(flavour: str) -> bool:
    tool = shutil.which(f"iptables-{flavour}-save")
    if not tool:
        return False
    proc = subprocess.run([tool, "-t", "filter"], capture_output=True, text=True)
    return proc.returncode == 0 and ":DOCKER" in proc.stdout


def detect_flavour(forced: str = "") -> str:
    """``forced`` (MULTINIC_FIREWALL), else where Docker's chains are, else what ``iptables -V`` is."""
    if forced:
        if forced not in FIREWALLS:
            raise Failure(f"MULTINIC_FIREWALL={forced!r} is not a firewall backend; use one of {', '.join(FIREWALLS)} "
                          "or leave it empty to follow Docker's (docker plugin set / /etc/default/multinic)")
        return forced
    for flavour in ("nft", "legacy"):
        if _has_docker_chains(flavour):
            return flavour
    proc = subprocess.run(["iptables", "-V"], capture_output=True, text=True) if shutil.which("iptables") else None
    return "legacy" if proc is not None and "legacy" in proc.stdout else "nft"


@dataclass(frozen=True)
class Firewall:
    """The backends of both families, of the same flavour: IPv4 (iptables) and IPv6 (ip6tables)."""

    v4: FirewallBackend
    v6: FirewallBackend

    @property
    def name(self) -> str:
        return self.v4.name

    def by_family(self) -> tuple[tuple[int, FirewallBackend], ...]:
        return (4, self.v4), (6, self.v6)


def backend_for(flavour: str, settings: Settings | None = None) -> FirewallBackend:
    """The IPv4 backend of a flavour."""
    if flavour == "nft":
        return RestoreBackend("nft")
    if flavour == "legacy-restore":
        return RestoreBackend("legacy")
    if flavour == "legacy":
        from .libiptc import LibiptcBackend

        return LibiptcBackend(*((settings.xtables_lock,) if settings else ()))
    raise ValueError(flavour)


def firewall_for(flavour: str, settings: Settings | None = None) -> Firewall:
    """Both families' backends of a flavour (legacy IPv6 goes through ``ip6tables-legacy-restore``)."""
    return Firewall(backend_for(flavour, settings), RestoreBackend("nft" if flavour == "nft" else "legacy", 6))


def select(settings: Settings) -> Firewall:
    """The backends for this host, detected once per process (and per forced flavour and lock)."""
    return _selected(settings.firewall, settings.xtables_lock)


@functools.lru_cache(maxsize=4)
def _selected(forced: str, xtables_lock: str) -> Firewall:
    from ...settings import Settings

    return firewall_for(detect_flavour(forced), Settings(firewall=forced, xtables_lock=xtables_lock))


__all__ = ["Firewall", "FirewallBackend", "RestoreBackend", "Ruleset", "View", "backend_for", "detect_flavour", "drift",
           "firewall_for", "select"]
