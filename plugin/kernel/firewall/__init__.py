"""The firewall: our chains and the jumps into them as data (:mod:`.model`, :mod:`.rules`), one backend
per way of writing them (:mod:`.native` through libnftables, :mod:`.restore`, :mod:`.libiptc`), and the
choice of backend (:func:`detect_flavour`): the native one wherever the kernel's nf_tables is what
Docker's firewall runs on (Docker's nftables backend, iptables-nft, or no iptables at all) and libnftables
loads; the legacy tables where Docker writes them, since rules elsewhere cannot open its FORWARD DROP."""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable

from ...errors import Failure
from ...settings import Settings
from . import nft
from .model import Edit, FirewallBackend, Ruleset
from .restore import RestoreBackend
from .view import View, drift

log = logging.getLogger(__name__)

DOCKER_NFT_TABLE = "docker-bridges"  # Engine 29's nftables backend: ip and ip6 tables of this name


def saved_holds(flavour: str, text: str, table: str = "", family: int = 4) -> bool:
    """Does ``iptables-<flavour>-save`` (ip6tables for ``family`` 6; of one table, or all) print ``text``?
    False without the tool."""
    tool = shutil.which(f"{'ip6' if family == 6 else 'ip'}tables-{flavour}-save")
    if not tool:
        return False
    proc = subprocess.run([tool, *(("-t", table) if table else ())], capture_output=True, text=True)
    return proc.returncode == 0 and text in proc.stdout


def docker_firewall() -> str:
    """Where Docker's firewall is in this namespace: ``nftables`` (Engine 29's ``docker-bridges`` tables),
    ``nft`` (its chains in iptables-nft's tables), ``legacy``, or "" (not found: dockerd not started yet,
    or ``--iptables=false``). Read in-process through libnftables where it loads."""
    if nft.available() is None:
        if any(name == DOCKER_NFT_TABLE for _family, name in nft.tables()):
            return "nftables"
        if any(c["table"] == "filter" and c["name"].startswith("DOCKER") for c in nft.chains()
               if c["family"] in ("ip", "ip6")):
            return "nft"
    elif saved_holds("nft", ":DOCKER", "filter"):
        return "nft"
    from .native import legacy_loaded  # legacy tables exist only once their module is loaded: no save before

    return "legacy" if (legacy_loaded(4) or legacy_loaded(6)) and saved_holds("legacy", ":DOCKER", "filter") else ""


def has_iptables() -> bool:
    return any(shutil.which(tool) for tool in ("iptables", "iptables-nft", "iptables-legacy"))


def iptables_flavour() -> str:
    """What the host's ``iptables`` command writes (``legacy`` or ``nft``, from ``iptables -V``; "" without
    it): where Docker 20.10 to 28 will put its chains when it has not written them yet."""
    if not shutil.which("iptables"):
        return ""
    proc = subprocess.run(["iptables", "-V"], capture_output=True, text=True)
    return "legacy" if "legacy" in proc.stdout else "nft"


def docker_firewall_or_expected() -> str:
    """:func:`docker_firewall`, or, before dockerd has written its chains (at boot the plugin starts first),
    ``legacy`` where the host's ``iptables`` is legacy: the FORWARD DROP policy dockerd sets next is there."""
    found = docker_firewall()
    return found or ("legacy" if iptables_flavour() == "legacy" else "")


def detect_flavour(forced: str = "") -> str:
    """``forced`` (MULTINIC_FIREWALL), else: ``legacy`` where Docker's chains are in the legacy tables (or
    will be: not written yet, and ``iptables -V`` says legacy); ``nftables`` (native) wherever libnftables
    loads (Docker on nftables, on iptables-nft, not started yet, or no iptables at all); else iptables-nft.
    ``forced`` is one of FIREWALLS: :func:`plugin.settings.load` refuses any other."""
    if forced:
        return "nft" if forced == "iptables-nft" else forced
    docker = docker_firewall_or_expected()
    if docker == "legacy":
        return "legacy"
    why_not = nft.available()
    if why_not is None:
        return "nftables"
    if docker == "nftables" or not has_iptables():
        raise Failure(f"Docker's firewall is nftables here (or there is no iptables), and {why_not}")
    log.warning("the native nftables backend cannot be used (%s); writing through iptables", why_not)
    return "nft"


@dataclass(frozen=True)
class Firewall:
    """The backends of both families, of the same flavour: IPv4 and IPv6 (iptables and ip6tables, or the
    ``ip multinic`` and ``ip6 multinic`` tables)."""

    v4: FirewallBackend
    v6: FirewallBackend
    flavour: str = ""  # what :func:`firewall_for` was given

    @property
    def name(self) -> str:
        return self.v4.name

    def by_family(self) -> tuple[tuple[int, FirewallBackend], ...]:
        return (4, self.v4), (6, self.v6)

    def edit(self, edits: tuple[Edit, ...], full: Callable[[], Ruleset], edits6: tuple[Edit, ...],
             full6: Callable[[], Ruleset]) -> None:
        """Both families' edits of a verb: with the native backend ONE libnftables transaction for both
        tables; the iptables backends one commit per family, IPv4 first."""
        from .native import NativeBackend, edit_together

        if isinstance(self.v4, NativeBackend) and isinstance(self.v6, NativeBackend):
            edit_together(((self.v4, edits, full), (self.v6, edits6, full6)))
            return
        for fw, todo, whole in ((self.v4, edits, full), (self.v6, edits6, full6)):
            if todo:
                fw.edit(todo, whole)


def firewall_for(flavour: str, settings: Settings | None = None) -> Firewall:
    """Both families' backends of a flavour (legacy IPv6 goes through ``ip6tables-legacy-restore``)."""
    lock = (settings.xtables_lock,) if settings else ()
    if flavour == "nftables":
        from .native import NativeBackend

        legacy = docker_firewall_or_expected() == "legacy"  # else the backend finds Docker's chains itself
        return Firewall(NativeBackend(4, *lock, legacy=legacy), NativeBackend(6, *lock, legacy=legacy), flavour)
    if flavour in ("nft", "iptables-nft"):
        return Firewall(RestoreBackend("nft"), RestoreBackend("nft", 6), "nft")
    if flavour == "legacy-restore":
        return Firewall(RestoreBackend("legacy"), RestoreBackend("legacy", 6), flavour)
    if flavour == "legacy":
        from .libiptc import LibiptcBackend

        return Firewall(LibiptcBackend(*lock), RestoreBackend("legacy", 6), flavour)
    raise ValueError(flavour)


def select(settings: Settings) -> Firewall:
    """The backends for this host, detected once per process (and per forced flavour and lock)."""
    return _selected(settings.firewall, settings.xtables_lock)


@functools.lru_cache(maxsize=4)
def _selected(forced: str, xtables_lock: str) -> Firewall:
    from ...settings import Settings

    return firewall_for(detect_flavour(forced), Settings(firewall=forced, xtables_lock=xtables_lock))


def remove_leftovers(selected: Firewall) -> list[str]:
    """Remove our chains or tables that another backend than ``selected`` wrote (the backend switched, by an
    upgrade or MULTINIC_FIREWALL): they would keep ports published and bridges open that the state no
    longer has. Run at start, before the whole host is reconciled; says what it removed."""
    from .native import TABLE, legacy_loaded

    removed = []
    native = selected.name == "nftables"
    native_here = nft.available() is None
    if not native and native_here:
        for family, name in sorted(nft.tables()):
            if name == TABLE and family in ("ip", "ip6"):
                nft.run(f"delete table {family} {TABLE}")
                removed.append(f"table {family} {TABLE}")
    for flavour in ("nft", "legacy"):
        if not native and flavour in selected.name:
            continue
        # The native backend keeps Docker's iptables FORWARD opened from filter: only its chains elsewhere go.
        tables = ("mangle", "nat") if native and docker_firewall() == flavour else ("mangle", "nat", "filter")
        if flavour == "nft" and native_here:
            found = any(c["name"].startswith("MULTINIC-") and c["table"] in tables for c in nft.chains()
                        if c["family"] in ("ip", "ip6"))
        else:
            loaded = flavour == "nft" or legacy_loaded(4) or legacy_loaded(6)
            found = loaded and saved_holds(flavour, "MULTINIC-")
        if found:
            for family in (4, 6):
                RestoreBackend(flavour, family, tables=tables).remove()
            removed.append(f"iptables-{flavour} chains in {', '.join(tables)}")
    return removed


__all__ = ["Firewall", "FirewallBackend", "RestoreBackend", "Ruleset", "View", "detect_flavour",
           "docker_firewall", "drift", "firewall_for", "remove_leftovers", "select"]
