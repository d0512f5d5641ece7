"""docs/firewall/*.md are generated from plugin/kernel/firewall/rules.py for a few example states; this
test fails when a golden file differs. Regenerate with:

    MULTINIC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_firewall_golden.py
"""

import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest

from plugin.kernel.firewall.explain import render_edit, render_native, render_native_edit, render_ruleset
from plugin.plan.desired import change, host_state
from plugin.plan.facts import ParentFacts
from plugin.plan.state import EndpointRecord, NetworkRecord, PublishedPort, State

DOCS = Path(__file__).resolve().parents[2] / "docs" / "firewall"
FACTS = {
    "eth1": ParentFacts("eth1", True, (ipaddress.IPv4Interface("192.168.101.2/24"),),
                        addresses6=(ipaddress.IPv6Interface("2001:db8:101::2/64"),),
                        prefixes6=(ipaddress.IPv6Network("2001:db8:101::/64"),)),
    "eth2": ParentFacts("eth2", True, (ipaddress.IPv4Interface("192.168.102.2/24"),)),
}
N1, N2, N3 = "1" * 64, "2" * 64, "3" * 64


def net(nid, bridge, subnet, **kw):
    gw = f"{subnet.rsplit('.', 1)[0]}.1/24"
    return NetworkRecord(id=nid, bridge=bridge, subnet=subnet, gateway=gw, **kw)


def ep(eid, nid, address, ports=()):
    return EndpointRecord(id=eid, network_id=nid, address=address, mac="", host_veth=f"mnh{eid[:12]}",
                          peer_veth=f"mnc{eid[:12]}", joined=True, ports=ports)


ONE = State(
    networks={N1: net(N1, "mn-web", "10.10.0.0/24", parent="eth1", parent_gateway="192.168.101.1", table=20000,
                      mark_slot=1)},
    endpoints={"e1" * 32: ep("e1" * 32, N1, "10.10.0.2/24", (PublishedPort("tcp", "", 8080, 80),))},
)
MANY = State(
    networks={
        **ONE.networks,
        N2: net(N2, "mn-routed", "10.20.0.0/24", parent="eth2", parent_gateway="192.168.102.1", table=20001,
                mark_slot=2, masquerade=False),
        N3: net(N3, "mn-internal", "10.30.0.0/24", internal=True),
    },
    endpoints={
        **ONE.endpoints,
        "e2" * 32: ep("e2" * 32, N2, "10.20.0.2/24", (PublishedPort("udp", "192.168.102.2", 5353, 53),)),
    },
)


DUAL = State(
    networks={N1: dataclasses.replace(ONE.networks[N1], subnet6="fd00:10::/64", gateway6="fd00:10::1/64",
                                      parent_gateway6="fe80::1")},
    endpoints={"e1" * 32: dataclasses.replace(ONE.endpoints["e1" * 32], address6="fd00:10::2/64")},
)


def verbs() -> dict[str, tuple]:
    """The firewall edits of a Join with and without a port, its Leave, a second network's create and its
    removal, from ONE."""
    before = ONE
    new = ep("e3" * 32, N1, "10.10.0.3/24", (PublishedPort("tcp", "", 8081, 80),))
    after = dataclasses.replace(before, endpoints={**before.endpoints, new.id: new})
    no_ports = dataclasses.replace(before, endpoints={**before.endpoints, new.id: dataclasses.replace(new, ports=())})
    add_net = dataclasses.replace(before, networks={**before.networks, N2: MANY.networks[N2]})
    return {"quiet": change(host_state(before, FACTS), host_state(no_ports, FACTS)).firewall,
            "join": change(host_state(before, FACTS), host_state(after, FACTS)).firewall,
            "leave": change(host_state(after, FACTS), host_state(before, FACTS)).firewall,
            "create": change(host_state(before, FACTS), host_state(add_net, FACTS)).firewall,
            "remove": change(host_state(add_net, FACTS), host_state(before, FACTS)).firewall}


def native_verbs() -> str:
    edits = verbs()
    return "\n".join([
        "Starting from [native-one-network.md](native-one-network.md), the one libnftables transaction each",
        "verb runs with the native backend, in the plugin's process (nothing is spawned). A published port is",
        "one element of the map `published` (or `published-any`), whatever the host holds; any other rule is",
        "appended, or deleted by the handle its comment (its iptables text) names in the kernel: reading that",
        "chain is the only read, and only a network's verbs do it. Beside Docker's iptables, a network's",
        "create and removal also open and close Docker's FORWARD DROP for its bridge (`-i/-o BRIDGE -j ACCEPT`",
        "in MULTINIC-FORWARD, entered from the end of DOCKER-USER: one `iptables-nft-restore`).\n",
        "## Join of a container without published ports\n", render_native_edit(edits["quiet"]),
        "## Join of a container publishing 8081/tcp\n", render_native_edit(edits["join"]),
        "## Leave of that container\n",
        "The element deleted (by its key). Its conntrack flows are left to end (a TCP flow to a container",
        "that is gone ends; only a published UDP port's flows are forgotten, over ctnetlink, as Docker does).\n",
        render_native_edit(edits["leave"]),
        "## Create of a second (routed, masquerade=false) network on eth2\n", render_native_edit(edits["create"]),
        "## Removal of that network\n", render_native_edit(edits["remove"]),
    ])


def native_dual_stack() -> str:
    """[dual-stack.md](dual-stack.md)'s IPv6 rules as the native backend writes them, and a Join's IPv6
    transaction."""
    new = ep("e3" * 32, N1, "10.10.0.3/24", (PublishedPort("tcp", "", 8081, 80),))
    new = dataclasses.replace(new, address6="fd00:10::3/64")
    after = dataclasses.replace(DUAL, endpoints={**DUAL.endpoints, new.id: new})
    return "\n".join([
        "[dual-stack.md](dual-stack.md) as the native nftables backend writes it: the table `ip multinic` is",
        "[native-one-network.md](native-one-network.md)'s, and `ip6 multinic`, written from the same plan's",
        "IPv6 ruleset, holds the same chains for the IPv6 subnet: `-p 8080:80` is an element of `published`",
        "keyed on eth1's stable IPv6 address (`[fd00:10::2]:80` its data), egress is `snat to` that address",
        "(`MULTINIC-SNAT`, entered first), and isolation and hairpin are the IPv4 table's. The table exists",
        "only while a network has IPv6.\n",
        "## ip6 multinic\n", render_native(host_state(DUAL, FACTS).firewall6, 6),
        "## Join of a dual-stack container publishing 8081/tcp: the IPv6 transaction\n",
        "The IPv4 commands are [native-per-verb-commits.md](native-per-verb-commits.md)'s; the verb sends both",
        "families' commands to libnftables as ONE transaction (both tables change, or neither).\n",
        render_native_edit(change(host_state(DUAL, FACTS), host_state(after, FACTS)).firewall6, 6),
    ])


def join_with_port() -> str:
    before = ONE
    new = ep("e3" * 32, N1, "10.10.0.3/24", (PublishedPort("tcp", "", 8081, 80),))
    after = dataclasses.replace(before, endpoints={**before.endpoints, new.id: new})
    no_ports = dataclasses.replace(before, endpoints={**before.endpoints, new.id: dataclasses.replace(new, ports=())})
    add_net = dataclasses.replace(before, networks={**before.networks, N2: MANY.networks[N2]})
    edits = change(host_state(before, FACTS), host_state(after, FACTS)).firewall
    quiet = change(host_state(before, FACTS), host_state(no_ports, FACTS)).firewall
    net_edits = change(host_state(before, FACTS), host_state(add_net, FACTS)).firewall
    leave = change(host_state(after, FACTS), host_state(before, FACTS)).firewall
    return "\n".join([
        "Starting from [one-network.md](one-network.md), what each verb commits. The request path",
        "writes only these edits, as one `iptables-nft-restore --noflush` (one nf_tables transaction);",
        "their size does not depend on how many networks or ports the host already has. Checking our",
        "chains and jumps, and rewriting everything, is the healer's job (every 30 s, at start, and",
        "when an edit is refused because the kernel no longer holds what the state says).\n",
        "## Join of a container without published ports\n", render_edit(quiet),
        "## Join of a container publishing 8081/tcp\n", render_edit(edits),
        "## Leave of that container\n",
        "Same rules, deleted (a published UDP port's conntrack flows would then be forgotten, over ctnetlink).\n",
        render_edit(leave),
        "## Create of a second (routed, masquerade=false) network on eth2\n", render_edit(net_edits),
    ])


EXAMPLES = {
    "one-network.md": lambda: "\n".join([
        "One network bound to eth1 (`--opt parent=eth1`), one container publishing `-p 8080:80`.\n",
        render_ruleset(host_state(ONE, FACTS).firewall)]),
    "three-networks.md": lambda: "\n".join([
        "Three networks: `mn-web` on eth1 (masquerade), `mn-routed` on eth2 (`masquerade=false`, a",
        "port published on a given HostIP), `mn-internal` (`--internal`). Isolation is two-staged:",
        "each bridge adds its own rules only, never one per other bridge.\n",
        render_ruleset(host_state(MANY, FACTS).firewall)]),
    "per-verb-commits.md": join_with_port,
    "native-one-network.md": lambda: "\n".join([
        "[one-network.md](one-network.md) as the native nftables backend writes it: its own table `ip multinic`",
        "(and `ip6 multinic` while a network has IPv6), written in one transaction through libnftables. The",
        "jumps become base chains on the same hooks; our chains keep their names and their rules, each rule",
        "commented with its iptables text; the 32 DNAT buckets become two lookups in the maps of published",
        "ports.\n",
        render_native(host_state(ONE, FACTS).firewall)]),
    "native-three-networks.md": lambda: "\n".join([
        "[three-networks.md](three-networks.md) as the native nftables backend writes it.\n",
        render_native(host_state(MANY, FACTS).firewall)]),
    "native-per-verb-commits.md": native_verbs,
    "native-dual-stack.md": native_dual_stack,
    "swarm-ingress.md": lambda: "\n".join([
        "What `--opt ingress_replies=true` adds to [one-network.md](one-network.md): replies coming back from",
        "docker_gwbridge (swarm's routing mesh: a published port is DNATed to ingress_sbox behind it) take the",
        "mark of the parent their connection came in on, so they leave by that parent's table.\n",
        render_edit(change(host_state(ONE, FACTS), host_state(dataclasses.replace(ONE, networks={
            N1: dataclasses.replace(ONE.networks[N1], ingress_replies=True)}), FACTS)).firewall)]),
    "dual-stack.md": lambda: "\n".join([
        "The network of [one-network.md](one-network.md) with IPv6 too (`--ipv6 --subnet 10.10.0.0/24 --subnet",
        "fd00:10::/64`): the IPv4 tables are unchanged, and the IPv6 tables (ip6tables, in the host's",
        "flavour) hold the same rules for the IPv6 subnet. `-p 8080:80` lands on eth1's global, stable IPv6",
        "address as well; egress leaves from that address (an explicit SNAT, entered before any MASQUERADE:",
        "MASQUERADE would let the kernel pick a temporary address). The IPv6 tables stay empty while no",
        "network has IPv6.\n",
        "## IPv6 (ip6tables)\n",
        render_ruleset(host_state(DUAL, FACTS).firewall6)]),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_firewall_doc_is_up_to_date(name):
    text = f"<!-- generated by tests/unit/test_firewall_golden.py; do not edit -->\n# {name[:-3]}\n\n" + \
        EXAMPLES[name]()
    path = DOCS / name
    if os.environ.get("MULTINIC_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists() and path.read_text() == text, (
        f"{path} is out of date: MULTINIC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest {__file__}")
