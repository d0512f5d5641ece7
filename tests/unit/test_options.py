import ipaddress

import pytest

from plugin.api.options import gw_priority_or_none, parse_endpoint_options, parse_network_options
from plugin.errors import Refusal


def test_defaults():
    opts = parse_network_options({})
    assert opts.parent is None and opts.masquerade is True and opts.gw_priority == 0


def test_full_set():
    opts = parse_network_options(
        {"parent": "eth1", "parent_gateway": "192.168.1.1", "table": "100", "bridge_name": "front0",
         "mtu": "1400", "masquerade": "false", "gw_priority": "-5"}
    )
    assert opts.parent == "eth1"
    assert opts.parent_gateway == ipaddress.IPv4Address("192.168.1.1")
    assert (opts.table, opts.bridge_name, opts.mtu, opts.masquerade, opts.gw_priority) == (100, "front0", 1400, False,
                                                                                           -5)


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"parnet": "eth1"}, ["unknown option parnet", "parent"]),
        ({"parent": "192.168.1.2"}, ["parent", "address, not an interface name"]),
        ({"parent": "10.0.0.0/8"}, ["parent", "interface name"]),
        ({"parent": "this-name-is-too-long"}, ["parent", "not a valid interface name"]),
        ({"parent": "eth1", "table": "abc"}, ["table", "not an integer"]),
        ({"parent": "eth1", "table": "254"}, ["table=254", "reserved"]),
        ({"parent": "eth1", "table": "0"}, ["table=0", "out of range"]),
        ({"parent": "eth1", "table": str(2**32)}, ["table", "out of range"]),
        ({"table": "100"}, ["table needs parent"]),
        ({"mtu": "9x"}, ["mtu", "not an integer"]),
        ({"mtu": "20"}, ["mtu=20", "out of range"]),
        ({"masquerade": "maybe"}, ["masquerade", "true or", "false"]),
        ({"gw_priority": "1.5"}, ["gw_priority", "not an integer"]),
        ({"gw_priority": str(2**31)}, ["gw_priority", "out of range"]),
        ({"parent": "eth1", "parent_gateway": "gw"}, ["parent_gateway", "not an IPv4 address"]),
        ({"parent_gateway": "1.2.3.4"}, ["parent_gateway needs parent"]),
    ],
)
def test_refusals_name_the_option(raw, words):
    with pytest.raises(Refusal) as err:
        parse_network_options(raw)
    for word in words:
        assert word in str(err.value)


def test_gw_priority_int32_edges():
    assert parse_network_options({"gw_priority": str(-(2**31))}).gw_priority == -(2**31)
    assert parse_network_options({"gw_priority": str(2**31 - 1)}).gw_priority == 2**31 - 1


def test_a_priority_read_from_dockerd_is_a_number_or_none():
    """dockerd's GwPriority (a JSON number) and an option in dockerd's view (text) read as a --opt parses,
    None where the option would be refused: never an error in the gateway watcher."""
    assert [gw_priority_or_none(v) for v in (7, "-5", " 12 ", 0)] == [7, -5, 12, 0]
    assert [gw_priority_or_none(v) for v in (2**31, "high", None, "", 1.5)] == [None] * 5


def test_endpoint_options_ignore_docker_keys():
    opts = parse_endpoint_options({"com.docker.network.endpoint.exposedports": [], "gw_priority": "7"})
    assert opts.gw_priority == 7
    assert parse_endpoint_options({}).gw_priority is None
    with pytest.raises(Refusal, match="unknown endpoint option foo"):
        parse_endpoint_options({"foo": "1"})


def test_settings_never_keep_the_plugin_from_starting() -> None:
    """A bad LOG_LEVEL or MULTINIC_WORKERS (a systemd override, a `docker plugin set`) is taken as the
    default and reported, not fatal: a plugin that does not start stalls dockerd."""
    from plugin import settings

    got = settings.load({"log_level": None}, {"LOG_LEVEL": "LOUD", "MULTINIC_WORKERS": "many",
                                               "MULTINIC_CHECK_INTERVAL": "-1", "MULTINIC_STATE_DIR": "/s"})
    assert (got.log_level, got.workers, got.check_interval, got.state_dir) == ("info", 1, 2.0, "/s")
    assert len(got.problems) == 3 and any("MULTINIC_WORKERS='many'" in p for p in got.problems)
    flags = settings.load({"log_level": "DEBUG", "socket": "/run/docker/plugins/x.sock"}, {"LOG_LEVEL": "error"})
    assert (flags.log_level, flags.driver_name, flags.problems) == ("debug", "x", ())
    # The unit's `--log-level ${LOG_LEVEL}` with `LOG_LEVEL=` in /etc/default/multinic: not given, the default
    empty = settings.load({"log_level": "", "state_dir": " "}, {"LOG_LEVEL": ""})
    assert (empty.log_level, empty.state_dir, empty.problems) == ("info", settings.Settings().state_dir, ())
    wrong = settings.load({}, {"MULTINIC_FIREWALL": "ipchains"})  # a typo: the backend is chosen from the host
    assert wrong.firewall == "" and "firewall backend 'ipchains' unknown" in wrong.problems[0]
    assert settings.load({}, {"MULTINIC_FIREWALL": "NFTables"}).firewall == "nftables"


@pytest.mark.parametrize("variable, value, instead", [
    ("DOCKER_HOST", "ssh://me@host", "using unix:///var/run/docker.sock"),
    ("DOCKER_HOST", "tcp://host:docker", "using unix:///var/run/docker.sock"),
    ("DOCKER_HOST", "unix://", "using unix:///var/run/docker.sock"),
    ("MULTINIC_METRICS_ADDRESS", "9327", "metrics off"),
    ("MULTINIC_METRICS_ADDRESS", "127.0.0.1:99999", "metrics off"),
])
def test_an_unusable_address_is_a_refused_setting_not_a_wait(variable, value, instead) -> None:
    """An address that can never work (a scheme multinic does not speak, no port) is refused when the
    settings are read, named with its fix, so /Plugin.Health says so instead of waiting for a dockerd or
    serving no metrics without a word; the default is used instead."""
    from plugin import settings

    got = settings.load({}, {variable: value})
    assert (got.docker_host, got.metrics_address) == ("", "")
    assert len(got.problems) == 1 and got.problems[0].startswith(f"{variable}={value!r}: ")
    assert got.problems[0].endswith(instead)
    flag = settings.load({"metrics_address": "nonsense"}, {})
    assert flag.problems == ("--metrics-address='nonsense': give HOST:PORT, e.g. 127.0.0.1:9327; metrics off",)


@pytest.mark.parametrize("variable, value", [
    ("DOCKER_HOST", "unix:///host/run/docker.sock"), ("DOCKER_HOST", "tcp://10.0.0.1:2375"),
    ("DOCKER_HOST", "tcp://dockerd"), ("MULTINIC_METRICS_ADDRESS", ":9327"),
    ("MULTINIC_METRICS_ADDRESS", "[::1]:9327"),
])
def test_a_usable_address_is_kept(variable, value) -> None:
    from plugin import settings

    got = settings.load({}, {variable: value})
    assert got.problems == () and value in (got.docker_host, got.metrics_address)
