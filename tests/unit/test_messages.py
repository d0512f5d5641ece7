import pytest

from plugin.api.messages import parse_create_endpoint, parse_create_network, parse_join
from plugin.errors import Refusal

NID = "5" * 64


def test_create_network_as_dockerd_sends_it():
    req = parse_create_network(
        {"NetworkID": NID,
         "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {"parent": "eth1"},
                     "com.docker.network.internal": True},
         "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.77.0.0/24", "Gateway": "10.77.0.1/24",
                       "AuxAddresses": {"r1": "10.77.0.250/24"}}],
         "IPv6Data": []}
    )
    assert req.internal and not req.ipv6
    assert str(req.ipv4[0].gateway) == "10.77.0.1/24"
    assert req.generic == {"parent": "eth1"}


def test_null_ipam_has_no_gateway():
    req = parse_create_network({"NetworkID": NID, "IPv4Data": [{"AddressSpace": "null", "Pool": "0.0.0.0/0"}]})
    assert req.ipv4[0].gateway is None


def test_join_port_map():
    req = parse_join(
        {"NetworkID": NID, "EndpointID": "9" * 64, "SandboxKey": "/var/run/docker/netns/x",
         "Options": {"com.docker.network.portmap": [
             {"Proto": 17, "IP": "", "Port": 90, "HostIP": "127.0.0.1", "HostPort": 9000, "HostPortEnd": 9001},
             {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 0, "HostPortEnd": 0}]}}
    )
    udp, tcp = req.ports
    assert (udp.proto_name, udp.host_port, udp.host_port_end, udp.host_ip) == ("udp", 9000, 9001, "127.0.0.1")
    assert (tcp.proto_name, tcp.host_port) == ("tcp", 0)


def test_bad_protocol_and_missing_ids():
    with pytest.raises(Refusal, match="protocol 1 is not supported"):
        parse_join({"NetworkID": NID, "EndpointID": "e" * 64,
                    "Options": {"com.docker.network.portmap": [{"Proto": 1, "Port": 80}]}})
    with pytest.raises(Refusal, match="missing EndpointID"):
        parse_create_endpoint({"NetworkID": NID, "Interface": {}})


def test_empty_body_says_dockerd_retry():
    with pytest.raises(Refusal, match="empty body.*run the docker command again"):
        parse_join({})
