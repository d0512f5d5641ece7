"""Firewall layer: one backend per iptables flavour, chosen to match the one dockerd uses.

Docker writes its rules with whatever ``iptables`` is on the host. On nf_tables hosts
(Debian 12, measured) rules written to the legacy tables are invisible to ``iptables -S`` and
cannot open Docker's FORWARD path, so the backend must follow Docker's flavour:

- ``nft``    → :class:`RestoreBackend` driving ``iptables-nft-restore``;
- ``legacy`` → :class:`LibiptcBackend` (python-iptables / libiptc);
- ``legacy-restore`` → ``iptables-legacy-restore`` (same tables, no python-iptables).

A future native nftables backend (Engine 29's firewall) is one more class with the same
three methods.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from .model import FirewallBackend, Ruleset
from .restore import RestoreBackend

FLAVOURS = ("nft", "legacy", "legacy-restore")


def _has_docker_chains(flavour: str) -> bool:
    tool = shutil.which(f"iptables-{flavour}-save")
    if not tool:
        return False
    proc = subprocess.run([tool, "-t", "filter"], capture_output=True, text=True)
    return proc.returncode == 0 and ":DOCKER" in proc.stdout


def detect_flavour() -> str:
    """The flavour to use: ``MULTINIC_FIREWALL``, else where Docker's chains are, else ``iptables -V``."""
    forced = os.environ.get("MULTINIC_FIREWALL", "").strip()
    if forced:
        if forced not in FLAVOURS:
            raise ValueError(f"MULTINIC_FIREWALL={forced!r}: use one of {', '.join(FLAVOURS)}")
        return forced
    for flavour in ("nft", "legacy"):
        if _has_docker_chains(flavour):
            return flavour
    proc = subprocess.run(["iptables", "-V"], capture_output=True, text=True)
    return "legacy" if "legacy" in proc.stdout else "nft"


def backend_for(flavour: str) -> FirewallBackend:
    if flavour == "nft":
        return RestoreBackend("nft")
    if flavour == "legacy-restore":
        return RestoreBackend("legacy")
    if flavour == "legacy":
        from .libiptc import LibiptcBackend

        return LibiptcBackend()
    raise ValueError(flavour)


def get_backend() -> FirewallBackend:
    return backend_for(detect_flavour())


__all__ = ["FirewallBackend", "Ruleset", "RestoreBackend", "backend_for", "detect_flavour", "get_backend"]
