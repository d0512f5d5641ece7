"""The writer's request path: what a verb changes is the difference of two desired states (pure)."""

import dataclasses
import ipaddress
import os
import random
from collections import Counter

from plugin.kernel.firewall.model import CHAINS, TABLES, Ruleset, dnat_bucket
from plugin.kernel.firewall.restore import RestoreBackend
from plugin.plan.desired import change, host_state, needs_parent_facts
from plugin.plan.facts import ParentFacts
from plugin.plan.state import EndpointRecord, NetworkRecord, ParentRecord, PublishedPort, State

FACTS = {"eth1": ParentFacts("eth1", True, (ipaddress.IPv4Interface("192.168.101.2/24"),), 1500,
                             addresses6=(ipaddress.IPv6Interface("2001:db8:101::2/64"),),
                             prefixes6=(ipaddress.IPv6Network("2001:db8:101::/64"),))}


def net(i, **kw):
    nid = f"{i:064x}"
    base = dict(id=nid, bridge=f"mn-{nid[-12:]}", subnet=f"10.{i // 256}.{i % 256}.0/24",
                gateway=f"10.{i // 256}.{i % 256}.1/24", parent="eth1", parent_gateway="192.168.101.1", table=20000,
                mark_slot=1)
    base.update(kw)
    return NetworkRecord(**base)


def net6(i, **kw):
    """A dual-stack network."""
    return net(i, subnet6=f"fd00:{i:x}::/64", gateway6=f"fd00:{i:x}::1/64", parent_gateway6="fe80::1", **kw)


def endpoint(i, network, joined=True, ports=()):
    eid = f"{(i * 0x9E3779B1) & 0xFFFFFFFF:08x}{i:056x}"  # spread over the DNAT buckets, as random ids are
    return EndpointRecord(id=eid, network_id=network.id, address=f"10.0.{i % 250}.{2 + i // 250}/16", mac="",
                          host_veth=f"mnh{eid[-12:]}", peer_veth=f"mnc{eid[-12:]}", joined=joined, ports=ports,
                          address6=f"fd00::{i + 2:x}/64" if network.subnet6 else "")


def host(n_networks=1, n_endpoints=0, ports=True):
    state = State(parents={"eth1": ParentRecord(rp_filter_before=1)})
    for i in range(n_networks):
        state.networks[net(i).id] = net(i)
    first = net(0)
    for i in range(n_endpoints):
        ep = endpoint(i, first, ports=(PublishedPort("tcp", "", 10000 + i, 80),) if ports else ())
        state.endpoints[ep.id] = ep
    return state


def diff(before, after):
    return change(host_state(before, FACTS), host_state(after, FACTS))


def run_rm(state, ports=()):
    """The four verbs of `docker run --rm`, as state transitions: the change of each."""
    ep = endpoint(999, net(0))
    steps = []
    s0 = state.copy()
    s1 = s0.copy()
    s1.endpoints[ep.id] = ep.__class__(**{**ep.__dict__, "joined": False})
    steps.append(("CreateEndpoint", diff(s0, s1)))
    s2 = s1.copy()
    s2.endpoints[ep.id] = ep.__class__(**{**ep.__dict__, "ports": ports})
    steps.append(("Join", diff(s1, s2)))
    s3 = s2.copy()
    s3.endpoints[ep.id] = ep.__class__(**{**ep.__dict__, "joined": False, "ports": ()})
    steps.append(("Leave", diff(s2, s3)))
    steps.append(("DeleteEndpoint", diff(s3, s0)))
    return steps


def test_endpoint_without_ports_touches_no_firewall_route_or_rule():
    for verb, todo in run_rm(host(3, 50)):
        assert todo.firewall == (), verb
        assert not (todo.routes_add or todo.routes_del or todo.rules_add or todo.rules_del or todo.sysctls), verb
        assert not todo.flows_gone, verb


def test_join_and_leave_with_ports_edit_only_their_own_rules_whatever_is_on_the_host():
    port = (PublishedPort("tcp", "", 9999, 80),)
    bucket = dnat_bucket(endpoint(999, net(0)).id)  # the endpoint run_rm starts
    sizes = []
    for existing in (0, 200):
        steps = dict(run_rm(host(1, existing), ports=port))
        join, leave = steps["Join"], steps["Leave"]
        assert [(e.chain, e.action) for e in join.firewall] == [(bucket, "-A")]
        assert [(e.chain, e.action) for e in leave.firewall] == [(bucket, "-D")]
        assert leave.flows_gone == ()  # a TCP flow to a container that is gone ends by itself
        sizes.append(len(RestoreBackend.edit_payload(join.firewall)))
    assert sizes[0] == sizes[1]
    udp = (PublishedPort("udp", "", 9999, 80),)
    assert dict(run_rm(host(1, 0), ports=udp))["Leave"].flows_gone == udp  # a UDP client's flows are forgotten


def test_join_and_leave_edit_only_the_endpoints_dnat_bucket():
    """Leave's -D costs what its chain holds: an endpoint's rules are all in its own bucket,
    among the rules of ~1/32 of the other endpoints; no other chain is touched."""
    state = host(1, 300)
    ep = endpoint(999, net(0))
    bucket = dnat_bucket(ep.id)
    before = host_state(state, FACTS).firewall
    neighbours = before.rules("nat", bucket)
    assert neighbours and len(neighbours) < 300 // 8  # shared with a few, not with all
    ports = (PublishedPort("tcp", "", 9999, 80), PublishedPort("udp", "192.168.101.2", 9998, 53))
    steps = dict(run_rm(state, ports=ports))
    assert {(e.table, e.chain, e.action) for e in steps["Join"].firewall} == {("nat", bucket, "-A")}
    assert {(e.table, e.chain, e.action) for e in steps["Leave"].firewall} == {("nat", bucket, "-D")}
    assert len(steps["Join"].firewall) == len(steps["Leave"].firewall) == 2
    assert all(ep.address.split("/")[0] in e.rule[-1] for e in steps["Join"].firewall)


def test_network_create_edits_the_same_number_of_rules_for_the_1st_and_50th_network():
    counts = []
    for existing in (1, 49):
        before = host(existing)
        after = before.copy()
        new = net(existing)
        after.networks[new.id] = new
        todo = diff(before, after)
        assert all(new.bridge in " ".join(e.rule) or "eth1" in e.rule for e in todo.firewall)
        assert not todo.routes_del and not todo.rules_del
        counts.append(len(todo.firewall))
    assert counts[0] == counts[1]


def test_first_and_last_network_go_through_the_full_writer():
    empty, one = State(parents={}), host(1)
    assert diff(empty, one).firewall is None  # chains and jumps are created by the full writer
    assert diff(one, State(parents=one.parents)).firewall is None


def test_last_network_on_a_parent_restores_rp_filter_as_desired_state():
    one = host(1)
    gone = State(parents=dict(one.parents))
    assert host_state(one, FACTS).sysctls == {"net/ipv4/conf/eth1/rp_filter": "2"}
    assert diff(one, gone).sysctls == {"net/ipv4/conf/eth1/rp_filter": "1"}


def apply_edits(ruleset: Ruleset, edits) -> dict:
    """What iptables does with -A (append) and -D (delete the first equal rule)."""
    chains = {(t, c): list(ruleset.rules(t, c)) for t in TABLES for c in CHAINS[t]}
    for e in edits:
        if e.action == "-A":
            chains[(e.table, e.chain)].append(e.rule)
        else:
            chains[(e.table, e.chain)].remove(e.rule)  # ValueError = iptables refusing the -D
    return chains


def test_random_verb_sequences_keep_the_kernel_equal_to_the_desired_state():
    """Property: starting from the desired rules of any state, applying each verb's edits leaves
    every chain holding the same rules as the full writer would write (as a multiset; the order
    between networks and endpoints does not matter by construction of the rules)."""
    rng = random.Random(13)
    for _trial in range(30):
        state = host(1)
        for _step in range(40):
            before = state.copy()
            choice = rng.random()
            if choice < 0.2 and len(state.networks) < 6:
                i = rng.randrange(1, 40)
                make = net6 if rng.random() < 0.4 else net
                state.networks.setdefault(net(i).id, make(i, masquerade=rng.random() < 0.7,
                                                        internal=rng.random() < 0.2))
            elif choice < 0.3 and len(state.networks) > 1:
                nid = rng.choice(sorted(state.networks))
                del state.networks[nid]
                state.endpoints = {k: v for k, v in state.endpoints.items() if v.network_id != nid}
            elif choice < 0.7:
                network = state.networks[rng.choice(sorted(state.networks))]
                i = rng.randrange(0, 500)
                ports = tuple(PublishedPort(rng.choice(["tcp", "udp"]), rng.choice(["", "0.0.0.0", "::"]), 20000 + i,
                                            80) for _ in range(rng.randrange(0, 2)))
                state.endpoints[endpoint(i, network).id] = endpoint(i, network, ports=ports)
            elif state.endpoints:
                del state.endpoints[rng.choice(sorted(state.endpoints))]
            old, new = host_state(before, FACTS), host_state(state, FACTS)
            todo = change(old, new)
            for edits, was, wanted in ((todo.firewall, old.firewall, new.firewall),
                                       (todo.firewall6, old.firewall6, new.firewall6)):
                if edits is None:
                    continue
                got = apply_edits(was, edits)
                want = {(t, c): list(wanted.rules(t, c)) for t in TABLES for c in CHAINS[t]}
                assert {k: Counter(v) for k, v in got.items()} == {k: Counter(v) for k, v in want.items()}


def test_join_and_leave_without_ports_change_nothing_on_the_host():
    steps = dict(run_rm(host(2, 10)))
    assert steps["Join"].is_empty() and steps["Leave"].is_empty()
    assert [v.host for v in steps["CreateEndpoint"].veths] == [endpoint(999, net(0)).host_veth]
    gone = steps["DeleteEndpoint"]
    assert (gone.veths_gone, gone.bridges_gone) == ((endpoint(999, net(0)).host_veth,), ())


def test_verbs_without_ports_need_no_parent_facts():
    """The writer skips reading the parents when only port-less endpoints change: the
    difference is the same over empty facts."""
    before = host(2, 30)
    ep = endpoint(999, net(0))
    after = before.copy()
    after.endpoints[ep.id] = ep
    assert not needs_parent_facts(before, after)
    assert change(host_state(before, {}), host_state(after, {})) == diff(before, after)
    with_port = before.copy()
    with_port.endpoints[ep.id] = endpoint(999, net(0), ports=(PublishedPort("tcp", "", 9, 9),))
    assert needs_parent_facts(before, with_port) and needs_parent_facts(with_port, after)
    other = before.copy()
    other.networks[net(7).id] = net(7)
    assert needs_parent_facts(before, other)


# -- scope: a verb's change computed over what it touched equals the whole host's -----------
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from plugin.plan.desired import scope  # noqa: E402

FACTS2 = {**FACTS, "eth2": ParentFacts("eth2", True, (ipaddress.IPv4Interface("192.168.102.2/24"),), 1500,
                                       addresses6=(ipaddress.IPv6Interface("2001:db8:102::2/64"),),
                                       prefixes6=(ipaddress.IPv6Network("2001:db8:102::/64"),))}


def _mutate(state: State, ops: list[tuple[int, int, int, int]]) -> State:
    """A verb-like step: add / replace / drop an endpoint (joined or not, with or without
    ports on every address or one family's), add / drop / change a network (on eth1 or eth2, internal,
    routed, dual-stack), a parent record coming or going, or an IPv6 setting to put back."""
    after = state.copy()
    for kind, a, b, c in ops:
        nets = sorted(after.networks)
        if kind == 0 and nets:
            network = after.networks[nets[a % len(nets)]]
            host_ip = ("", "0.0.0.0", "::", "")[b % 4]
            ports = tuple(PublishedPort("tcp" if c % 2 else "udp", host_ip, 20000 + b, 80) for _ in range(c % 3))
            ep = endpoint(b, network, joined=bool(c % 4), ports=ports if c % 4 else ())
            if c % 4 == 3:  # in one of two containers: their endpoints share ports
                ep = dataclasses.replace(ep, sandbox_key=f"/var/run/docker/netns/{a % 2}",
                                         ports=(PublishedPort("tcp", "", 30000 + a % 2, 80),))
            after.endpoints[ep.id] = ep
        elif kind == 1 and after.endpoints:
            del after.endpoints[sorted(after.endpoints)[a % len(after.endpoints)]]
        elif kind == 2:
            parent = "eth2" if c % 2 else "eth1"
            make = net6 if (b // 5) % 3 == 1 else net
            n = make(a % 13, parent=parent, table=20000 + c % 2, mark_slot=1 + c % 2,
                     masquerade=bool(b % 3), internal=b % 5 == 0, ingress_replies=c % 4 >= 2)
            after.networks[n.id] = n
        elif kind == 3 and len(nets) > 1:
            nid = nets[a % len(nets)]
            del after.networks[nid]
            after.endpoints = {k: v for k, v in after.endpoints.items() if v.network_id != nid}
        elif kind == 4:
            parent = "eth2" if a % 2 else "eth1"
            if parent in after.parents:
                del after.parents[parent]
            else:
                after.parents[parent] = ParentRecord(rp_filter_before=b % 3)
        elif kind == 5:
            path = ("net/ipv6/conf/all/forwarding", "net/ipv6/conf/eth0/accept_ra")[a % 2]
            if path in after.restore6:
                del after.restore6[path]
            else:
                after.restore6[path] = str(b % 2)
    return after


OPS = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 50), st.integers(0, 50), st.integers(0, 7)),
               min_size=1, max_size=4)


@settings(max_examples=int(os.environ.get("MULTINIC_PROPERTY_EXAMPLES", "300")), deadline=None)
@given(st.lists(OPS, min_size=1, max_size=6), OPS)
@example([[(0, 0, 1, 1)]], [(2, 0, 1, 1)])  # the network of 20 published endpoints moves to eth2
@example([[(4, 0, 0, 0)]], [(3, 1, 0, 0)])  # a parent record goes while a network is removed
@example([[(2, 0, 0, 1), (2, 2, 1, 1), (2, 3, 1, 1)]], [(2, 2, 0, 0)])  # the first sibling left is internal
@example([[(2, 1, 1, 0), (0, 0, 3, 3), (0, 2, 5, 3)]], [(0, 0, 3, 0)])  # a container's first endpoint leaves
@example([[(2, 2, 1, 3), (2, 4, 1, 2)]], [(3, 2, 0, 0)])  # the mesh's restore rule stays with the other parent's
@example([[(2, 1, 6, 0)]], [(2, 1, 1, 0)])  # the only dual-stack network becomes IPv4-only
@example([[(2, 1, 6, 0), (2, 2, 6, 0)]], [(0, 1, 1, 1)])  # a port on every address of a dual-stack network
def test_the_change_over_a_verbs_scope_is_the_change_over_the_whole_host(history, verb):
    """Property: whatever is on the host, the writer's scoped change (the endpoints a verb
    touched and their networks, or every network when one changed) is exactly the change the
    whole host's desired states give, with or without parent facts."""
    state = host(2, 20)
    for ops in history:
        state = _mutate(state, ops)
    after = _mutate(state, verb)
    for facts in (FACTS2, {}):
        whole = change(host_state(state, facts), host_state(after, facts))
        mine, theirs = scope(state, after)
        assert change(host_state(mine, facts), host_state(theirs, facts)) == whole


def test_a_network_verb_scopes_to_one_sibling_per_parent_not_to_every_network():
    before = host(40, 0)
    new = net(77)
    after = before.copy()
    after.networks[new.id] = new
    mine, theirs = scope(before, after)
    assert len(theirs.networks) == 2 and new.id in theirs.networks  # itself and one sibling on eth1
    assert change(host_state(mine, FACTS), host_state(theirs, FACTS)) == diff(before, after)


def test_an_endpoint_verb_scopes_to_that_endpoint_and_its_network():
    before = host(3, 200)
    ep = endpoint(999, net(1), ports=(PublishedPort("tcp", "", 9999, 80),))
    after = before.copy()
    after.endpoints[ep.id] = ep
    mine, theirs = scope(before, after)
    assert set(mine.networks) == set(theirs.networks) == {net(1).id}
    assert mine.endpoints == {} and set(theirs.endpoints) == {ep.id}


def test_a_containers_endpoints_publish_a_port_once_and_hand_it_over_when_one_leaves():
    """dockerd sends the whole port map to each endpoint of a container: one DNAT (one map element) per
    host port, the lowest endpoint id's; when that endpoint leaves, the other's appears in the same verb."""
    port = (PublishedPort("tcp", "", 4050, 80),)
    a, b = (dataclasses.replace(endpoint(i, net(i), ports=port), sandbox_key="/var/run/docker/netns/c1")
            for i in (1, 2))
    first, second = sorted((a, b), key=lambda e: e.id)
    both = host(3, 0)
    both.endpoints.update({a.id: a, b.id: b})
    rules = [r for chain, rs in host_state(both, FACTS).firewall.chains["nat"].items() if chain.startswith(
        "MULTINIC-DNAT-") for r in rs]
    assert len(rules) == 1 and rules[0][-1] == f"{first.address.split('/')[0]}:80"
    left = both.copy()
    left.endpoints[first.id] = dataclasses.replace(first, joined=False, ports=(), sandbox_key="")
    edits = diff(both, left).firewall
    assert [e.action for e in edits] == ["-D", "-A"] and edits[1].rule[-1] == f"{second.address.split('/')[0]}:80"
    mine, theirs = scope(both, left)
    assert change(host_state(mine, FACTS), host_state(theirs, FACTS)) == diff(both, left)


def test_only_an_object_not_there_or_already_there_sends_an_edit_to_the_whole_host():
    """The kernel's "no such object" and "already exists" mean it does not hold what the state says (the
    whole host is re-applied); a permission or any other error is the host failing, raised as it came."""
    import errno

    import pytest
    from pyroute2.netlink.exceptions import NetlinkError

    from plugin.kernel import writer

    def failing(exc):
        def step():
            raise exc
        return step

    for exc in (NetlinkError(errno.ENODEV), NetlinkError(errno.EEXIST), FileNotFoundError(errno.ENOENT, "gone")):
        with pytest.raises(writer.Diverged):
            writer._netlink_steps(failing(exc))
    for exc in (NetlinkError(errno.EPERM), PermissionError(errno.EACCES, "no"), NetlinkError(errno.ENETUNREACH)):
        with pytest.raises(type(exc)):
            writer._netlink_steps(failing(exc))
