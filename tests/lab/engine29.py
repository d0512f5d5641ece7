"""Engine 29's nftables firewall, simulated for a lab (no Engine 29 package exists for these machines):
dockerd 28.5 runs with its own firewall off (``--iptables=false --ip6tables=false --ip-forward=false``),
the lab writes the ruleset Engine 29's nftables backend writes at daemon start (moby's
``integration/network/bridge/nftablesdoc``: tables ``ip docker-bridges`` and ``ip6 docker-bridges``, base
chains on the same hooks and priorities with policy accept, verdict maps keyed on the bridge's name,
docker0's per-network chains), ip_forward is the operator's (the lab's host sets it, Docker does not), there
is no DOCKER-USER, and neither dockerd nor the plugin finds an ``iptables`` binary on its PATH.

Also the nftables side of the lab's host dump: every table that is not one of iptables-nft's, listed
statelessly with map elements sorted, so dumps compare byte for byte."""

from __future__ import annotations

import os
import re
from pathlib import Path

DOCKERD_ARGS = ("--iptables=false", "--ip6tables=false", "--ip-forward=false")
IPTABLES_TOOLS = re.compile(r"^(ip6?tables|arptables|ebtables|xtables)(-|$)")
IPTABLES_TABLES = {"filter", "nat", "mangle", "raw", "security", "broute"}  # iptables-nft's, in ip/ip6/bridge

# nftablesdoc's new-daemon.md, with docker0's subnet filled in. nft 1.0.6 (Debian 12) names priority
# dstnat for the prerouting hook only: nat-OUTPUT says -100, which is what dstnat is.
RULESET = """\
add table {fam} docker-bridges
delete table {fam} docker-bridges
table {fam} docker-bridges {{
{maps}	chain filter-FORWARD {{
		type filter hook forward priority filter; policy accept;
		oifname vmap @filter-forward-in-jumps
		iifname vmap @filter-forward-out-jumps
	}}
	chain nat-OUTPUT {{
		type nat hook output priority -100; policy accept;
		{ip} daddr != {loopback} fib daddr type local counter jump nat-prerouting-and-output
	}}
	chain nat-POSTROUTING {{
		type nat hook postrouting priority srcnat; policy accept;
		iifname vmap @nat-postrouting-out-jumps
		oifname vmap @nat-postrouting-in-jumps
	}}
	chain nat-PREROUTING {{
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local counter jump nat-prerouting-and-output
	}}
	chain nat-prerouting-and-output {{
	}}
	chain raw-PREROUTING {{
		type filter hook prerouting priority raw; policy accept;
	}}
{bridge_chains}}}
"""

DOCKER0_CHAINS = """\
	chain filter-forward-in__docker0 {{
		ct state established,related counter accept
		iifname "docker0" counter accept comment "ICC"
		counter drop comment "UNPUBLISHED PORT DROP"
	}}
	chain filter-forward-out__docker0 {{
		ct state established,related counter accept
		counter accept comment "OUTGOING"
	}}
	chain nat-postrouting-in__docker0 {{
	}}
	chain nat-postrouting-out__docker0 {{
		oifname != "docker0" {ip} saddr {subnet} counter masquerade comment "MASQUERADE"
	}}
"""


VMAPS = ("filter-forward-in", "filter-forward-out", "nat-postrouting-in", "nat-postrouting-out")


def ruleset(docker0_subnet: str | None, family: int = 4) -> str:
    """nft commands writing Engine 29's ``docker-bridges`` table of one family (replacing it, as dockerd's
    start does): its verdict maps (keyed on a bridge's name, docker0's jumps in them), its base chains, and
    docker0's chains only for a family docker0 has a subnet in."""
    fam, ip, loopback = ("ip6", "ip6", "::1") if family == 6 else ("ip", "ip", "127.0.0.0/8")
    maps = "".join(f"\tmap {m}-jumps {{\n\t\ttype ifname : verdict\n"
                   + (f'\t\telements = {{ "docker0" : jump {m}__docker0 }}\n' if docker0_subnet else "") + "\t}\n"
                   for m in VMAPS)
    chains = DOCKER0_CHAINS.format(ip=ip, subnet=docker0_subnet) if docker0_subnet else ""
    return RULESET.format(fam=fam, ip=ip, loopback=loopback, maps=maps, bridge_chains=chains)


def path_without_iptables(shim: Path, path: str) -> str:
    """A PATH with every tool of ``path`` but iptables' (ip6tables, ebtables, xtables...): one directory of
    symlinks, made once. What a host without the iptables package looks like to a process."""
    if not (shim / ".done").exists():
        shim.mkdir(parents=True, exist_ok=True)
        for directory in path.split(os.pathsep):
            if not os.path.isdir(directory):
                continue
            for entry in sorted(os.listdir(directory)):
                link, target = shim / entry, os.path.join(directory, entry)
                if IPTABLES_TOOLS.match(entry) or link.exists() or link.is_symlink():
                    continue
                if os.path.isfile(target) and os.access(target, os.X_OK):
                    link.symlink_to(target)
        (shim / ".done").write_text("")
    return str(shim)


def normalise_nft(listing: str) -> list[str]:
    """``nft -s list ruleset`` without iptables-nft's tables (the iptables-save part of the dump has them),
    whitespace collapsed, each map's elements one per line and sorted."""
    out: list[str] = []
    keep = True
    elements: list[str] | None = None
    for raw in listing.splitlines():
        line = " ".join(raw.split())
        if not line:
            continue
        m = re.match(r"^table (\S+) (\S+) \{$", line)
        if m:
            keep = not (m.group(1) in ("ip", "ip6", "bridge", "arp") and m.group(2) in IPTABLES_TABLES)
        if not keep:
            continue
        if elements is None and line.startswith("elements = {"):
            elements = []
            line = line[len("elements = {"):]
        if elements is not None:
            done = line.endswith("}")
            elements += [e.strip() for e in line.rstrip("}").split(",") if e.strip()]
            if done:
                out += ["elements:", *sorted(elements)]
                elements = None
            continue
        out.append(line)
    return out
