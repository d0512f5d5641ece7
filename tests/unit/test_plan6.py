"""IPv6 planning, pure over (state, host facts): subnets and next hops, the host settings put back
with the last IPv6 network, where ports land and which addresses are refused."""

import dataclasses
import ipaddress

import pytest

from plugin.api.messages import CreateNetworkRequest, Pool, PortBinding
from plugin.api.options import NetworkOptions
from plugin.errors import Refusal
from plugin.kernel.firewall.rules import publish_addresses, ruleset_for
from plugin.plan.desired import FORWARDING6, host_state, ipv6_sysctls
from plugin.plan.facts import HostFacts, ParentFacts
from plugin.plan.network import (
    GATEWAY_GIVEN,
    GATEWAY_ROUTE,
    kept_at_last6,
    plan_network,
    publish_resolver,
    restore6_for,
)
from plugin.plan.ports import allocate
from plugin.plan.state import PublishedPort, State

ETH1 = ParentFacts("eth1", True, (ipaddress.IPv4Interface("192.168.101.2/24"),), 1500,
                   addresses6=(ipaddress.IPv6Interface("2001:db8:101::2/64"),),
                   prefixes6=(ipaddress.IPv6Network("2001:db8:101::/64"),))
RA = {"eth0": ipaddress.IPv6Address("fe80::1"), "eth1": ipaddress.IPv6Address("fe80::1")}
FACTS = HostFacts(parents={"eth1": ETH1}, default_gateways6=RA, accept_ra={"eth0": 1, "eth1": 1, "eth2": 0},
                  ra_default=frozenset({"eth0", "eth1"}), forwarding6="0",
                  local_addresses=frozenset({"192.168.101.2", "2001:db8:101::2", "::1"}))


def pool(cidr):
    net = ipaddress.ip_network(cidr)
    return Pool(pool=net, gateway=ipaddress.ip_interface(f"{next(net.hosts())}/{net.prefixlen}"))


def request(v6="fd00:10::/64", v4="10.10.0.0/24", nid="a" * 64, ipv4=True):
    return CreateNetworkRequest(network_id=nid, generic={}, internal=False, ipv6=True,
                                ipv4=(pool(v4),) if ipv4 else (), ipv6_pools=(pool(v6),), ipv4_enabled=ipv4)


def plan(state=None, facts=FACTS, req=None, **opts):
    return plan_network(state or State(), req or request(), NetworkOptions(parent="eth1", **opts), facts, "1")[0]


def test_dual_stack_takes_the_advertised_router_as_ipv6_next_hop():
    record = plan()
    assert (record.subnet, record.subnet6, record.gateway6) == ("10.10.0.0/24", "fd00:10::/64", "fd00:10::1/64")
    assert (record.parent_gateway6, record.gateway6_source) == ("fe80::1", GATEWAY_ROUTE)
    assert plan(parent_gateway6=ipaddress.IPv6Address("fe80::9")).gateway6_source == GATEWAY_GIVEN


def test_ipv6_only_network_has_no_ipv4():
    record = plan(req=request(ipv4=False))
    assert (record.subnet, record.gateway, record.parent_gateway, record.families) == ("", "", None, (6,))


@pytest.mark.parametrize("v6, words", [
    ("2001:db8:101::/64", "overlaps eth1's own network"),
    ("fe80::/64", "link-local"),
    ("ff05::/64", "multicast"),
])
def test_bad_ipv6_subnets_are_refused(v6, words):
    with pytest.raises(Refusal, match=words):
        plan(req=request(v6))


def test_no_ipv6_default_route_and_none_given_is_refused_naming_the_option():
    with pytest.raises(Refusal, match="parent_gateway6"):
        plan(facts=HostFacts(parents={"eth1": ETH1}))


def test_parent_without_global_ipv6_is_refused():
    bare = ParentFacts("eth1", True, ETH1.addresses, 1500)
    with pytest.raises(Refusal, match="no global IPv6 address"):
        plan(facts=HostFacts(parents={"eth1": bare}, default_gateways6=RA))


def test_overlapping_ipv6_networks_are_refused():
    first = plan()
    state = State(networks={first.id: first})
    with pytest.raises(Refusal, match="overlaps multinic network"):
        plan(state, req=request("fd00:10::/56", "10.11.0.0/24", nid="b" * 64))


def test_host_settings_recorded_then_put_back_forwarding_first():
    record = plan()
    restore = restore6_for(State(), record, FACTS)
    # accept_ra goes to 2 on the parent and on every NIC whose default route came from an advertisement
    assert restore == {FORWARDING6: "0", "net/ipv6/conf/eth0/accept_ra": "1", "net/ipv6/conf/eth1/accept_ra": "1"}
    on = State(networks={record.id: record}, restore6=restore)
    assert list(ipv6_sysctls(on).items()) == [("net/ipv6/conf/eth0/accept_ra", "2"),
                                              ("net/ipv6/conf/eth1/accept_ra", "2"), (FORWARDING6, "1")]
    off = State(restore6=restore)
    assert list(ipv6_sysctls(off))[0] == FORWARDING6 and ipv6_sysctls(off)[FORWARDING6] == "0"
    # a second IPv6 network records nothing new
    assert restore6_for(on, plan(on, req=request("fd00:11::/64", "10.11.0.0/24", nid="b" * 64)), FACTS) == {}


def test_forwarding_stays_on_when_another_bridge_routes_ipv6_after_the_last_network():
    """Docker's own IPv6 bridge, made while multinic had forwarding on, found it on and left it so: the last
    multinic IPv6 network going puts nothing back (accept_ra stays 2, or forwarding would drop the NICs'
    router-advertised routes)."""
    record = plan()
    restore = restore6_for(State(), record, FACTS)
    gone = State(restore6=dict(restore))  # the last IPv6 network deleted
    assert kept_at_last6(gone, FACTS) == ()  # no other bridge: all is put back
    docker6 = HostFacts(foreign_ipv6_bridges=frozenset({"br-0123456789ab"}))
    assert kept_at_last6(gone, docker6) == tuple(sorted(restore))
    assert kept_at_last6(State(networks={record.id: record}, restore6=restore), docker6) == ()  # not the last
    assert kept_at_last6(State(restore6={"net/ipv6/conf/eth0/accept_ra": "1"}), docker6) == ()  # found at 1


def test_ipv4_only_state_has_no_ipv6_objects():
    record = plan_network(State(), CreateNetworkRequest("c" * 64, {}, False, False, (pool("10.12.0.0/24"),)),
                          NetworkOptions(parent="eth1"), FACTS, "1")[0]
    state = State(networks={record.id: record})
    assert ruleset_for(state, {"eth1": ETH1}, 6).is_empty()
    assert all(rule.family == 4 for rule in host_state(state, {"eth1": ETH1}).rules)
    assert FORWARDING6 not in host_state(state, {"eth1": ETH1}).sysctls


def test_ports_land_on_each_family_as_docker_publishes_them():
    dual, only4 = plan(), plan_network(State(), CreateNetworkRequest("c" * 64, {}, False, False,
                                                                     (pool("10.12.0.0/24"),)),
                                       NetworkOptions(parent="eth1"), FACTS, "1")[0]
    parents = {"eth1": ETH1}
    assert publish_addresses(dual, "", parents) == ("192.168.101.2", "2001:db8:101::2")
    assert publish_addresses(dual, "0.0.0.0", parents) == ("192.168.101.2",)
    assert publish_addresses(dual, "::", parents) == ("2001:db8:101::2",)
    assert publish_addresses(only4, "", parents) == ("192.168.101.2",)
    resolve = publish_resolver(only4, FACTS)
    with pytest.raises(Refusal, match="is IPv6 but network .* is IPv4 only"):
        resolve("2001:db8:101::2")
    with pytest.raises(Refusal, match="loopback"):
        publish_resolver(dual, FACTS)("::1")


@pytest.mark.parametrize("host_ip", [
    "2001:db8:777::1",  # no NIC's
    "2001:db8:100::2",  # eth0's
    "2001:db8:101::99",  # eth1's, but temporary or deprecated (the facts leave it out of addresses6)
])
def test_published_ipv6_address_must_be_a_stable_one_of_the_parent(host_ip):
    facts = HostFacts(parents=FACTS.parents,
                      local_addresses=FACTS.local_addresses | {"2001:db8:100::2", "2001:db8:101::99"})
    with pytest.raises(Refusal, match=rf"-p \[{host_ip}\]:4000:80/tcp: published host address {host_ip} is not a "
                                      r"stable IPv6 address \(global, not temporary or deprecated\) of eth1, the "
                                      r"parent of network aaaaaaaaaaaa; publish on one of 2001:db8:101::2, or leave"):
        allocate([PortBinding(6, 80, host_ip, 4000, 4000)], publish_resolver(plan(), facts), [], lambda *_: True)


def test_a_given_address_lands_only_while_the_parent_has_it_stable():
    dual = plan()
    assert publish_addresses(dual, "2001:db8:101::2", {"eth1": ETH1}) == ("2001:db8:101::2",)
    assert publish_addresses(dual, "2001:db8:101:0::2", {"eth1": ETH1}) == ("2001:db8:101::2",)
    # renumbered, or the address deprecated: no longer among the parent's stable addresses
    moved = dataclasses.replace(ETH1, addresses6=(ipaddress.IPv6Interface("2001:db8:201::2/64"),))
    assert publish_addresses(dual, "2001:db8:101::2", {"eth1": moved}) == ()
    assert publish_addresses(dual, "192.168.101.2", {"eth1": moved}) == ("192.168.101.2",)  # IPv4: as given


@pytest.mark.parametrize("mine, theirs, meet", [
    ("", "2001:db8::1", True), ("0.0.0.0", "10.0.0.1", True), ("0.0.0.0", "2001:db8::1", False),
    ("::", "2001:db8::1", True), ("::", "10.0.0.1", False), ("10.0.0.1", "10.0.0.2", False),
    ("10.0.0.1", "0.0.0.0", True), ("2001:db8::1", "::", True),
])
def test_port_addresses_meet_within_a_family(mine, theirs, meet):
    assert PublishedPort("tcp", mine, 80, 80).lands_on(theirs) is meet


def test_a_parent_deaf_to_router_advertisements_is_named_with_the_fix():
    """Another tool (Docker's own --ipv6 bridge) turned forwarding on first: eth1 (accept_ra=1) lost its
    advertised default route, and the refusal says why and how to get it back."""
    deaf = HostFacts(parents={"eth1": ETH1}, forwarding6="1", accept_ra={"eth1": 1})
    with pytest.raises(Refusal, match=r"sysctl -w net.ipv6.conf.eth1.accept_ra=2 .* parent_gateway6="):
        plan(facts=deaf)
