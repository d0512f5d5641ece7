import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin.api.messages import PortBinding
from plugin.errors import Refusal
from plugin.plan.ports import allocate, may_clash, spelled
from plugin.plan.state import PublishedPort


def ips(host_ip):
    return (host_ip,) if host_ip else ("192.168.101.2",)


def free(*_):
    return True


def test_fixed_port_and_ephemeral_skip_taken():
    taken = [PublishedPort("tcp", "192.168.101.2", 40000, 80)]
    got = allocate([PortBinding(6, 80, "", 4000, 4000), PortBinding(6, 81)], ips, taken, free, (40000, 40010))
    assert [(p.host_port, p.container_port) for p in got] == [(4000, 80), (40001, 81)]


def test_range_takes_first_free_port():
    taken = [PublishedPort("udp", "", 9000, 90)]  # "" = every address, overlaps ours
    got = allocate([PortBinding(17, 90, "", 9000, 9001)], ips, taken, free)
    assert got[0].host_port == 9001


def test_conflict_names_the_port():
    taken = [PublishedPort("tcp", "192.168.101.2", 4000, 80)]
    with pytest.raises(Refusal, match=r"host port 4000/tcp on 192.168.101.2 is already published"):
        allocate([PortBinding(6, 80, "", 4000, 4000)], ips, taken, free)


def test_other_protocol_or_address_does_not_conflict():
    taken = [PublishedPort("udp", "192.168.101.2", 4000, 80), PublishedPort("tcp", "10.0.0.1", 4000, 80)]
    assert allocate([PortBinding(6, 80, "", 4000, 4000)], ips, taken, free)[0].host_port == 4000


def test_port_held_on_host_is_refused():
    with pytest.raises(Refusal, match="in use on the host"):
        allocate([PortBinding(6, 80, "", 4000, 4000)], ips, [], lambda proto, ip, port: port != 4000)


def test_two_bindings_in_one_request_do_not_collide():
    got = allocate([PortBinding(6, 80), PortBinding(6, 81)], ips, [], free, (50000, 50001))
    assert {p.host_port for p in got} == {50000, 50001}


def test_port_without_host_ip_is_kept_without_one():
    """Resolved to the parent's addresses when the rules are rendered: it follows a readdressed parent."""
    got = allocate([PortBinding(6, 80, "", 4000, 4000), PortBinding(6, 81, "0.0.0.0", 4001, 4001),
                    PortBinding(6, 82, "192.168.101.2", 4002, 4002)], ips, [], free)
    assert [(p.host_ip, p.host_port) for p in got] == [("", 4000), ("0.0.0.0", 4001), ("192.168.101.2", 4002)]


@pytest.mark.parametrize("binding, text", [
    (PortBinding(6, 80, "", 8080, 8080), "8080:80/tcp"),
    (PortBinding(17, 80, "2001:db8::2", 8080, 8081), "[2001:db8::2]:8080-8081:80/udp"),
    (PortBinding(6, 80, "10.0.0.1", 8080, 8080), "10.0.0.1:8080:80/tcp"),
    (PortBinding(6, 80), "80/tcp"),
    (PortBinding(132, 80, "::1"), "[::1]::80/sctp"),
])
def test_a_binding_is_named_as_docker_run_spells_it(binding, text):
    assert spelled(binding) == text


def test_a_refused_host_address_names_the_port():
    def refuse(host_ip):
        raise Refusal(f"published host address {host_ip} is no good")

    with pytest.raises(Refusal, match=r"^-p 10.0.0.9:4000:80/tcp: published host address 10.0.0.9 is no good$"):
        allocate([PortBinding(6, 80, "10.0.0.9", 4000, 4000)], refuse, [], free)


_ports = st.integers(40000, 40012)


@st.composite
def _binding(draw):
    first = draw(st.sampled_from([0, *range(40000, 40013)]))
    last = first if first == 0 else draw(st.integers(first, 40012))
    return PortBinding(draw(st.sampled_from([6, 17])), 80, draw(st.sampled_from(["", "10.0.0.1"])), first, last)


@given(st.lists(_binding(), min_size=1, max_size=3),
       st.lists(st.builds(PublishedPort, st.sampled_from(["tcp", "udp"]), st.sampled_from(["", "10.0.0.1", "10.0.0.2"]),
                          _ports, st.just(80)), max_size=30))
def test_only_ports_that_may_clash_change_an_allocation(bindings, taken):
    """A Join looks only at the host's ports that share a number with its bindings: the allocation (or
    the refusal) is the one the whole host gives."""
    def outcome(ports):
        try:
            return allocate(bindings, lambda ip: (ip,), ports, free, (40005, 40012))
        except Refusal as exc:
            return str(exc)

    clash = may_clash(bindings, (40005, 40012))
    assert outcome([p for p in taken if clash(p)]) == outcome(taken)


def test_a_wide_range_and_port_zero_clash_by_span():
    """Short ranges are looked up port by port; a wide range and port 0 (the whole ephemeral range) by span."""
    clash = may_clash([PortBinding(6, 80, "", 40000, 40100), PortBinding(17, 53, "", 0, 0),
                       PortBinding(6, 81, "", 8080, 8081)], (30000, 30999))
    tcp, udp = (lambda port: PublishedPort("tcp", "", port, 80)), (lambda port: PublishedPort("udp", "", port, 53))
    assert [clash(tcp(n)) for n in (39999, 40000, 40100, 40101, 8080, 8081, 8082, 30500)] == [
        False, True, True, False, True, True, False, False]
    assert [clash(udp(n)) for n in (29999, 30000, 30999, 31000, 8080, 40000)] == [
        False, True, True, False, False, False]
