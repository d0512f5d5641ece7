"""The native nftables backend's rendering of the one ruleset (pure): every rule shape the plan writes has an
nft form, published ports are map elements, a verb's edit is one element per port, and the kernel's JSON
listing compares with the ruleset."""

import dataclasses
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.kernel.firewall.model import CHAINS, NAT_DNAT_BUCKETS, TABLES, Edit, Ruleset
from plugin.kernel.firewall.native import (
    PUBLISHED,
    PUBLISHED_ANY,
    Table,
    base_chains,
    comment,
    document,
    edit_commands,
    element,
    opening,
    opening_edits,
    statement,
    table_drift,
    wanted_elements,
)
from plugin.plan.desired import change, host_state
from plugin.plan.facts import ParentFacts
from plugin.plan.state import PublishedPort, State
from tests.unit.test_change import FACTS2, OPS, _mutate, endpoint, host, net
from tests.unit.test_firewall_golden import FACTS, MANY, ONE

FACTS6 = {"eth1": ParentFacts("eth1", True, (ipaddress.IPv4Interface("192.168.101.2/24"),), 1500,
                              addresses6=(ipaddress.IPv6Interface("2001:db8:101::2/64"),),
                              prefixes6=(ipaddress.IPv6Network("2001:db8:101::/64"),))}


def _dual_stack() -> State:
    state = host(2, 3)
    first = next(iter(state.networks.values()))
    state.networks[first.id] = dataclasses.replace(first, subnet6="fd00:10::/64", gateway6="fd00:10::1/64")
    for eid, ep in list(state.endpoints.items()):
        state.endpoints[eid] = dataclasses.replace(ep, address6=f"fd00:10::{ep.id[:4]}/64")
    return state


def every_rule(ruleset: Ruleset):
    for table in TABLES:
        for chain in CHAINS[table]:
            for rule in ruleset.rules(table, chain):
                yield table, chain, rule


@settings(max_examples=150, deadline=None)
@given(st.lists(OPS, min_size=1, max_size=5))
def test_every_rule_the_plan_writes_has_an_nft_form(history):
    state = host(2, 10)
    for ops in history:
        state = _mutate(state, ops)
    for facts in (FACTS2, {}):
        ruleset = host_state(state, facts).firewall
        for _table, chain, rule in every_rule(ruleset):
            if chain in NAT_DNAT_BUCKETS:
                assert element(rule, 4).map in (PUBLISHED, PUBLISHED_ANY)
            elif chain != "MULTINIC-DNAT":
                assert statement(rule, 4)
            assert len(comment(rule)) <= 128
        assert document(ruleset, 4).startswith("table ip multinic {")


def test_ipv6_rules_render_in_the_ip6_table():
    hs = host_state(_dual_stack(), FACTS6)
    text = document(hs.firewall6, 6)
    assert text.startswith("table ip6 multinic {")
    assert "ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service" in text
    assert "dnat to ip6 daddr . meta l4proto . th dport map @published" in text
    assert 'ip6 saddr fd00:10::/64 oifname "eth1" snat to 2001:db8:101::2' in text
    assert "2001:db8:101::2 . tcp . 10000 : fd00:10::" in text


@pytest.mark.parametrize("rule, nft", [
    (("-i", "eth1", "-m", "conntrack", "--ctstate", "NEW", "-j", "CONNMARK", "--set-xmark", "0x10000/0xff0000"),
     'iifname "eth1" ct state new ct mark set ct mark and 0xff00ffff xor 0x10000'),
    (("-i", "mn-x", "-j", "CONNMARK", "--restore-mark", "--nfmask", "0xff0000", "--ctmask", "0xff0000"),
     'iifname "mn-x" meta mark set ct mark and 0xff0000'),
    (("-o", "mn-x", "-m", "conntrack", "--ctstate", "NEW", "-m", "connmark", "--mark", "0x0/0xff0000", "-j",
      "CONNMARK", "--set-xmark", "0xff0000/0xff0000"),
     'oifname "mn-x" ct state new ct mark and 0xff0000 == 0x0 ct mark set ct mark and 0xff00ffff xor 0xff0000'),
    (("-s", "10.1.0.0/24", "!", "-o", "mn-x", "-j", "MASQUERADE"),
     'ip saddr 10.1.0.0/24 oifname != "mn-x" masquerade'),
    (("-o", "mn-x", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"),
     'oifname "mn-x" ct state related,established accept'),
    (("-o", "mn-x", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"), 'oifname "mn-x" ct status dnat accept'),
    (("-o", "br-+", "-j", "DROP"), 'oifname "br-*" drop'),
    (("-i", "mn-x", "-j", "MULTINIC-ISOLATE-DST"), 'iifname "mn-x" jump MULTINIC-ISOLATE-DST'),
    (("-m", "addrtype", "--dst-type", "LOCAL", "-j", "MULTINIC-DNAT"), "fib daddr type local jump MULTINIC-DNAT"),
])
def test_statements(rule, nft):
    assert statement(rule, 4) == nft


def test_a_rule_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError):
        statement(("-m", "recent", "--set", "-j", "ACCEPT"), 4)


def test_published_ports_are_map_elements():
    rs = host_state(MANY, FACTS).firewall
    assert wanted_elements(rs, 4) == {
        PUBLISHED: {("192.168.101.2", "tcp", "8080"): ("10.10.0.2", "80"),
                    ("192.168.102.2", "udp", "5353"): ("10.20.0.2", "53")},
        PUBLISHED_ANY: {}}
    anywhere = element(("-p", "sctp", "-m", "sctp", "--dport", "3868", "-j", "DNAT", "--to-destination",
                        "10.0.0.3:3868"), 4)
    assert (anywhere.map, anywhere.text) == (PUBLISHED_ANY, "sctp . 3868 : 10.0.0.3 . 3868")


def ports_held(held: int) -> tuple[State, State, object]:
    """A host publishing ``held`` ports (one network on eth1), and the same after a Join publishing 40000/tcp
    (and the endpoint that joined)."""
    before = host(1, 0)
    first = next(iter(before.networks.values()))
    for i in range(held):
        ep = endpoint(i, first, ports=(PublishedPort("tcp", "", 10000 + i, 80),))
        before.endpoints[ep.id] = ep
    new = endpoint(5000, first, ports=(PublishedPort("tcp", "", 40000, 80),))
    after = before.copy()
    after.endpoints[new.id] = new
    return before, after, new


def test_join_and_leave_are_one_element_whatever_the_host_holds():
    """The request path's transaction for a port: one element, never a read, at 0 or 2000 ports held."""
    for held in (0, 2000):
        before, after, new = ports_held(held)
        join = change(host_state(before, FACTS), host_state(after, FACTS)).firewall
        leave = change(host_state(after, FACTS), host_state(before, FACTS)).firewall

        def no_read(chain):
            raise AssertionError(f"read of {chain}")

        assert edit_commands(join, 4, no_read) == [
            f"add element ip multinic published {{ 192.168.101.2 . tcp . 40000 : {new.address[:-3]} . 80 }}"]
        assert edit_commands(leave, 4, no_read) == [
            "delete element ip multinic published { 192.168.101.2 . tcp . 40000 }"]


def test_a_rule_is_deleted_by_the_handle_its_comment_names():
    rule = ("-i", "mn-x", "-j", "ACCEPT")
    handles = {comment(rule): [7, 9]}
    edits = (Edit("filter", "MULTINIC-FORWARD", "-D", rule), Edit("filter", "MULTINIC-FORWARD", "-D", rule))
    assert edit_commands(edits, 4, lambda chain: dict(handles)) == [
        "delete rule ip multinic MULTINIC-FORWARD handle 7", "delete rule ip multinic MULTINIC-FORWARD handle 9"]
    with pytest.raises(Exception, match="no rule"):
        edit_commands((*edits, edits[0]), 4, lambda chain: {comment(rule): [7, 9]})


def test_long_comments_are_cut_with_a_digest():
    rule = ("-o", "x" * 60, "-m", "comment", "--comment", "y" * 80, "-j", "DROP")
    text = comment(rule)
    assert len(text) == 128 and text != comment((*rule[:-1], "ACCEPT"))


def test_docker_s_forward_drop_opens_per_bridge_and_follows_its_bridges():
    rs = host_state(MANY, FACTS).firewall
    opened = opening(rs).rules("filter", "MULTINIC-FORWARD")
    assert set(opened) == {(d, b, "-j", "ACCEPT") for d in ("-i", "-o") for b in ("mn-web", "mn-routed", "mn-internal")}
    add = change(host_state(ONE, FACTS), host_state(MANY, FACTS)).firewall
    assert {e.rule[1] for e in opening_edits(add)} == {"mn-routed", "mn-internal"}
    assert all(e.action == "-A" and e.chain == "MULTINIC-FORWARD" for e in opening_edits(add))


def test_base_chains_stand_for_the_jumps():
    chains = base_chains()
    assert {name: chains[name][:3] for name in chains} == {
        "mangle-PREROUTING": ("filter", "prerouting", "mangle"),
        "mangle-POSTROUTING": ("filter", "postrouting", "mangle"),
        "nat-PREROUTING": ("nat", "prerouting", "dstnat"),
        "nat-OUTPUT": ("nat", "output", "-100"),
        "nat-POSTROUTING": ("nat", "postrouting", "srcnat"),
        "filter-FORWARD": ("filter", "forward", "filter"),
    }
    assert len(chains["filter-FORWARD"][3]) == 1  # DOCKER-USER's and FORWARD's jumps are one hook here


def _listing(ruleset: Ruleset) -> list[dict]:
    """What libnftables lists for a table holding exactly ``ruleset``."""
    items: list[dict] = [{"table": {"family": "ip", "name": "multinic"}}]
    handle = 1
    prios = {"mangle": -150, "dstnat": -100, "srcnat": 100, "filter": 0, "-100": -100}
    for name, (_kind, hook, prio, jumps) in base_chains().items():
        items.append({"chain": {"name": name, "hook": hook, "prio": prios[prio]}})
        for _ in jumps:
            handle += 1
            items.append({"rule": {"chain": name, "handle": handle, "comment": "multinic"}})
    for _t, chain, rule in every_rule(ruleset):
        if chain not in NAT_DNAT_BUCKETS and chain != "MULTINIC-DNAT":  # the buckets' jumps are two lookups here
            handle += 1
            items.append({"rule": {"chain": chain, "handle": handle, "comment": comment(rule)}})
    for table in TABLES:
        for chain in CHAINS[table]:
            if chain not in NAT_DNAT_BUCKETS:
                items.append({"chain": {"name": chain}})
    items += [{"rule": {"chain": "MULTINIC-DNAT", "handle": 900 + i}} for i in range(2)]
    for m, elements in wanted_elements(ruleset, 4).items():
        items.append({"map": {"name": m, "elem": [[{"concat": list(k)}, {"concat": list(v)}]
                                                  for k, v in elements.items()]}})
    return items


def test_drift_compares_comments_and_elements():
    rs = host_state(MANY, FACTS).firewall
    items = _listing(rs)
    assert table_drift(Table.parse(items), rs, 4) == []
    no_port = [i for i in items if "map" not in i] + [{"map": {"name": PUBLISHED}}, {"map": {"name": PUBLISHED_ANY}}]
    assert table_drift(Table.parse(no_port), rs, 4) == ["table ip multinic: map published differs from the published "
                                                        "ports"]
    flushed = [i for i in items if not ("rule" in i and i["rule"]["chain"] == "MULTINIC-PREROUTING")]
    assert table_drift(Table.parse(flushed), rs, 4) == ["table ip multinic: MULTINIC-PREROUTING differs from the "
                                                        "state"]
    assert table_drift(Table.parse([]), rs, 4) == ["table ip multinic missing"]
    assert table_drift(Table.parse(items), Ruleset(), 4) == ["table ip multinic exists, no network needs it"]


def test_every_network_shape_of_the_golden_docs_renders():
    text = document(host_state(MANY, FACTS).firewall, 4)
    for needle in ('iifname "mn-internal" drop', 'oifname "mn-routed" jump MULTINIC-ISOLATE-SRC',
                   "192.168.102.2 . udp . 5353 : 10.20.0.2 . 53", 'fib daddr type local jump MULTINIC-DNAT'):
        assert needle in text
    assert net  # the helpers of test_change build the states here
