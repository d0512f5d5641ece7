"""Published ports' DNAT rules sharded over the MULTINIC-DNAT-xx buckets, against the real
nf_tables kernel (iptables-nft), in a scratch network namespace only.

A host with 300 endpoints' rules; a Leave-like edit deletes one endpoint's rules from its bucket
and a Join-like edit puts them back, both through ``RestoreBackend("nft").edit`` as the request
path runs it; the kernel is read with ``iptables-nft-save -t nat``. Nothing here times anything.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import subprocess
from collections import Counter

import pytest

from plugin.kernel.firewall.model import (
    BUCKET_JUMPS,
    CHAINS,
    NAT_DNAT,
    NAT_DNAT_BUCKETS,
    TABLES,
    Ruleset,
    diff,
    dnat_bucket,
)
from plugin.kernel.firewall.restore import RestoreBackend
from plugin.kernel.firewall.rules import ruleset_for
from plugin.kernel.firewall.view import line as rule_line
from plugin.plan.facts import ParentFacts
from plugin.plan.state import EndpointRecord, NetworkRecord, PublishedPort, State
from tests.nsutil import in_netns, scratch_netns, sh

TOOLS = ("ip", "nsenter", "iptables-nft", "iptables-nft-save", "iptables-nft-restore")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, iptables)"),
    pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"),
]

NS = f"mnd-{os.getpid()}"
FACTS = {"eth1": ParentFacts("eth1", True, (ipaddress.IPv4Interface("192.168.101.2/24"),), 1500)}
NID = "a1" * 32
ENDPOINTS = 300


def endpoint_id(i: int) -> str:
    return f"{(i * 0x9E3779B1) & 0xFFFFFFFF:08x}{i:056x}"  # spread over the buckets, as random ids are


def host(n: int = ENDPOINTS) -> State:
    net = NetworkRecord(id=NID, bridge="mn-a1", subnet="10.10.0.0/16", gateway="10.10.0.1/16", parent="eth1",
                        parent_gateway="192.168.101.1", table=20000, mark_slot=1)
    state = State(networks={NID: net})
    for i in range(n):
        eid = endpoint_id(i)
        ports = (PublishedPort("tcp", "", 10000 + i, 80), PublishedPort("udp", "", 10000 + i, 53))
        state.endpoints[eid] = EndpointRecord(id=eid, network_id=NID, address=f"10.10.{1 + i // 250}.{2 + i % 250}/16",
                                              mac="", host_veth=f"mnh{i}", peer_veth=f"mnc{i}", joined=True,
                                              ports=ports)
    return state


def left(state: State, eid: str) -> State:
    """The state after that endpoint's Leave: not joined, no ports."""
    ep = dataclasses.replace(state.endpoints[eid], joined=False, ports=())
    return dataclasses.replace(state, endpoints={**state.endpoints, eid: ep})


def nat_chains(ns: str) -> dict[str, list[str]]:
    """``iptables-nft-save -t nat``: chain → its ``-A`` lines, in order."""
    chains: dict[str, list[str]] = {}
    for line in sh(ns, "iptables-nft-save -t nat").splitlines():
        if line.startswith(":"):
            chains.setdefault(line[1:].split(" ", 1)[0], [])
        elif line.startswith("-A "):
            chains.setdefault(line.split(" ", 2)[1], []).append(line)
    return chains


def expected_nat(ruleset: Ruleset) -> dict[str, list[str]]:
    return {c: [rule_line("-A", c, r) for r in ruleset.rules("nat", c)] for c in CHAINS["nat"]}


def ours(chains: dict[str, list[str]]) -> dict[str, list[str]]:
    return {c: lines for c, lines in chains.items() if c in CHAINS["nat"]}


def _call(method: str, *args):
    return getattr(RestoreBackend("nft"), method)(*args)


def nft(method: str, *args):
    return in_netns(NS, _call, method, *args)


def _spawns(method: str, *args) -> list[str]:
    """The programs ``RestoreBackend("nft").method(*args)`` starts (names only)."""
    started: list[str] = []
    real = subprocess.Popen.__init__

    def record(self, argv, *a, **kw):  # noqa: ANN001 - subprocess.Popen's own signature
        started.append(os.path.basename(str(argv[0])))
        return real(self, argv, *a, **kw)

    subprocess.Popen.__init__ = record
    try:
        _call(method, *args)
    finally:
        subprocess.Popen.__init__ = real
    return started


@pytest.fixture
def ns():
    with scratch_netns(NS) as name:
        sh(name, "iptables-nft -N DOCKER-USER && iptables-nft -A DOCKER-USER -j RETURN && "
                 "iptables-nft -A FORWARD -j DOCKER-USER && iptables-nft -P FORWARD DROP")
        yield name
    assert NS not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_leave_and_join_edit_one_bucket_among_300_endpoints(ns):
    full = host()
    ruleset = ruleset_for(full, FACTS)
    nft("apply", ruleset)
    kernel = nat_chains(ns)
    assert ours(kernel) == expected_nat(ruleset)
    assert kernel[NAT_DNAT] == [f"-A {NAT_DNAT} -j {b}" for b in NAT_DNAT_BUCKETS]  # in order
    assert sum(len(kernel[b]) for b in NAT_DNAT_BUCKETS) == 2 * ENDPOINTS
    assert sum(1 for b in NAT_DNAT_BUCKETS if kernel[b]) > 16  # spread out

    # Leave of endpoint 123: its two rules are deleted from its bucket, nothing else changes.
    eid = endpoint_id(123)
    bucket = dnat_bucket(eid)
    gone = [ln for ln in kernel[bucket] if "--to-destination 10.10.1.125:" in ln]
    assert len(gone) == 2 and len(kernel[bucket]) > 2  # the bucket keeps its other endpoints' rules
    after = ruleset_for(left(full, eid), FACTS)
    edits = diff(ruleset, after)
    assert {(e.table, e.chain, e.action) for e in edits} == {("nat", bucket, "-D")} and len(edits) == 2
    nft("edit", edits, lambda: after)
    kernel_left = nat_chains(ns)
    assert kernel_left[bucket] == [ln for ln in kernel[bucket] if ln not in gone]
    assert {c: v for c, v in kernel_left.items() if c != bucket} == {c: v for c, v in kernel.items() if c != bucket}
    assert ours(kernel_left) == expected_nat(after)

    # Join again: appended at the end of the same bucket; the same rules as before, as a multiset.
    edits = diff(after, ruleset)
    assert {(e.table, e.chain, e.action) for e in edits} == {("nat", bucket, "-A")} and len(edits) == 2
    nft("edit", edits, lambda: ruleset)
    kernel_back = nat_chains(ns)
    assert kernel_back[bucket] == [*kernel_left[bucket], *gone]
    assert {c: Counter(v) for c, v in kernel_back.items()} == {c: Counter(v) for c, v in kernel.items()}

    # Leave again: the -D finds the re-added rules at the end of the bucket.
    nft("edit", diff(ruleset, after), lambda: after)
    assert ours(nat_chains(ns)) == expected_nat(after)

    nft("remove")
    assert "MULTINIC" not in sh(ns, "iptables-nft-save")


def test_dump_and_apply_read_the_tables_with_one_save_and_list_every_bucket(ns):
    ruleset = ruleset_for(host(40), FACTS)
    first = _spawns_in(ns, "apply", ruleset)  # mangle and nat do not exist yet: read on their own
    assert first[-1] == "iptables-nft-restore" and set(first[:-1]) == {"iptables-nft-save"}
    assert _spawns_in(ns, "apply", ruleset) == ["iptables-nft-save", "iptables-nft-restore"]
    assert _spawns_in(ns, "dump") == ["iptables-nft-save"]
    dump = nft("dump")
    want = [*(f"-A {c} -m addrtype --dst-type LOCAL -m comment --comment multinic -j {NAT_DNAT}"
              for c in ("PREROUTING", "OUTPUT")),
            "-A POSTROUTING -m comment --comment multinic -j MULTINIC-POSTROUTING"]
    for chain in CHAINS["nat"]:
        want += [f"-N {chain}", *expected_nat(ruleset)[chain]]
    assert dump["nat"] == want
    assert [ln for ln in dump["nat"] if ln.startswith(f"-A {NAT_DNAT} ")] == \
        [rule_line("-A", NAT_DNAT, r) for r in BUCKET_JUMPS]
    assert set(dump) == set(TABLES)
    nft("remove")
    assert nft("dump") == {t: [] for t in TABLES}


def _spawns_in(ns: str, method: str, *args) -> list[str]:
    return in_netns(ns, _spawns, method, *args)
