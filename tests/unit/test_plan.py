"""Planning is pure over (state, host facts): no kernel needed to test it."""

import ipaddress

import pytest

from plugin.api.messages import CreateNetworkRequest, Pool
from plugin.api.options import NetworkOptions
from plugin.errors import Refusal
from plugin.kernel.tags import TABLE_ALLOC_FIRST
from plugin.plan.facts import HostFacts, ParentFacts
from plugin.plan.network import plan_network, publish_resolver
from plugin.plan.state import NetworkRecord, State

ETH1 = ParentFacts("eth1", True, (ipaddress.IPv4Interface("192.168.101.2/24"),), 1450)
FACTS = HostFacts(parents={"eth1": ETH1}, links=frozenset({"lo", "eth1"}),
                  local_addresses=frozenset({"192.168.101.2", "127.0.0.1"}))


def request(nid="a" * 64, subnet="10.10.0.0/24", internal=False):
    net = ipaddress.IPv4Network(subnet)
    gw = ipaddress.IPv4Interface(f"{next(net.hosts())}/{net.prefixlen}")
    return CreateNetworkRequest(network_id=nid, generic={}, internal=internal, ipv6=False,
                                ipv4=(Pool(pool=net, gateway=gw),))


def plan(state=None, facts=FACTS, rp="1", **opts):
    return plan_network(state or State(), request(), NetworkOptions(**opts), facts, rp)


def test_parent_network_gets_first_free_table_mark_and_mtu():
    record, parent = plan(parent="eth1")
    assert (record.table, record.mark_slot, record.mtu) == (TABLE_ALLOC_FIRST, 1, 1450)
    assert record.parent_gateway == "192.168.101.1"  # first host of the parent's subnet
    assert parent.rp_filter_before == 1


def test_table_in_use_on_the_host_is_skipped():
    facts = HostFacts(parents=FACTS.parents, tables_in_use=frozenset({TABLE_ALLOC_FIRST, TABLE_ALLOC_FIRST + 1}))
    record, _ = plan(facts=facts, parent="eth1")
    assert record.table == TABLE_ALLOC_FIRST + 2


def test_explicit_table_in_use_is_refused():
    facts = HostFacts(parents=FACTS.parents, tables_in_use=frozenset({100}))
    with pytest.raises(Refusal, match="table=100"):
        plan(facts=facts, parent="eth1", table=100)


def test_foreign_default_gateway_is_the_parents_next_hop():
    facts = HostFacts(parents=FACTS.parents, default_gateways={"eth1": ipaddress.IPv4Address("192.168.101.254")})
    record, _ = plan(facts=facts, parent="eth1")
    assert record.parent_gateway == "192.168.101.254"


def test_missing_parent_and_taken_bridge_name_are_refused():
    with pytest.raises(Refusal, match="parent=eth9"):
        plan(parent="eth9")
    with pytest.raises(Refusal, match="bridge_name=eth1"):
        plan(bridge_name="eth1")


def test_sibling_on_same_parent_shares_table_and_mark_and_keeps_rp_filter():
    first, _ = plan(parent="eth1")
    state = State(networks={first.id: first})
    second, parent = plan_network(state, request("b" * 64, "10.11.0.0/24"), NetworkOptions(parent="eth1"),
                                          FACTS, "0")
    assert (second.table, second.mark_slot) == (first.table, first.mark_slot)
    assert parent is None  # the first network's record keeps the original rp_filter


def test_overlap_with_parent_subnet_is_refused():
    with pytest.raises(Refusal, match="overlaps eth1"):
        plan_network(State(), request(subnet="192.168.101.0/25"), NetworkOptions(parent="eth1"), FACTS)


def test_publish_ips_pure():
    net = NetworkRecord(id="a" * 64, bridge="mn-a", subnet="10.10.0.0/24", gateway="10.10.0.1/24", parent="eth1")
    resolve = publish_resolver(net, FACTS)
    assert resolve("") == ("192.168.101.2",)
    assert resolve("0.0.0.0") == ("192.168.101.2",)
    assert resolve("192.168.101.2") == ("192.168.101.2",)
    with pytest.raises(Refusal, match="loopback"):
        resolve("127.0.0.1")


def test_an_ipv4_host_ip_may_be_any_address_of_the_host():
    """eth0's address on a network bound to eth1 is the user's choice (replies to what enters there follow
    main); an address the host lacks is refused, with or without a parent."""
    net = NetworkRecord(id="a" * 64, bridge="mn-a", subnet="10.10.0.0/24", gateway="10.10.0.1/24", parent="eth1")
    facts = HostFacts(parents=FACTS.parents, local_addresses=FACTS.local_addresses | {"192.168.100.2"})
    assert publish_resolver(net, facts)("192.168.100.2") == ("192.168.100.2",)
    plain = NetworkRecord(id="b" * 64, bridge="mn-b", subnet="10.11.0.0/24", gateway="10.11.0.1/24")
    for record in (net, plain):
        with pytest.raises(Refusal, match="192.168.101.9 is not an address of this host"):
            publish_resolver(record, facts)("192.168.101.9")
