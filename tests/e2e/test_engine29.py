"""Engine 29's nftables firewall, simulated (no Engine 29 package exists for these machines): dockerd 28.5
with its own firewall off, the ``docker-bridges`` tables Engine 29 writes, no DOCKER-USER, ip_forward the
operator's, no iptables on the plugin's PATH (tests/lab/engine29.py). multinic chooses its native nftables
backend there, and the seed case, egress by the parent, isolation, hairpin, restarts, a reboot, churn and
the fuzzer hold as beside Docker's iptables."""

from __future__ import annotations

import concurrent.futures
import os
import shutil

import pytest

from tests.e2e.conftest import own_lab
from tests.e2e.helpers import across_two_networks, containers, fetch, inspect_ip, network, run, wait_for, web_cmd
from tests.e2e.test_soak import worker_loop
from tests.lab import C1_ADDR6, HOST6_ETH1, Lab
from tests.lab.engine29 import DOCKERD_ARGS

CHURN_CYCLES = int(os.environ.get("MULTINIC_ENGINE29_CHURN", "24"))
FUZZ_COUNT = min(int(os.environ.get("MULTINIC_FUZZ_COUNT", "3000")), 1000)


@pytest.fixture(scope="module")
def lab29():
    with own_lab("29", "28.5", docker_firewall="nftables") as lab:
        lab.start_plugin()
        yield lab


@pytest.fixture
def e29(lab29):
    """The module's lab with its plugin serving (a test that stops it gets it back)."""
    if not lab29.plugin_running():
        lab29.start_plugin()
    yield lab29
    lab29.stop_background()


def _plugin_path(lab: Lab) -> str:
    """The PATH the running plugin really has (nsenter execs it: the process the lab started)."""
    with open(f"/proc/{lab.plugin_pid}/environ", "rb") as fh:
        env = dict(item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item)
    return env[b"PATH"].decode()


def test_the_simulation_is_engine29s_nftables_mode(e29):
    lab = e29
    tables = lab.host("nft", "list", "tables").stdout
    assert "table ip docker-bridges" in tables and "table ip6 docker-bridges" in tables
    assert "DOCKER" not in lab.host("iptables-nft-save").stdout  # no DOCKER-USER, no iptables chain of Docker's
    assert shutil.which("iptables", path=_plugin_path(lab)) is None  # the plugin finds no iptables
    assert shutil.which("nft", path=_plugin_path(lab)) is not None
    with open(lab.pidfile) as fh:
        cmdline = open(f"/proc/{fh.read().strip()}/cmdline", "rb").read().decode().split("\0")
    assert all(arg in cmdline for arg in DOCKERD_ARGS)  # Docker's firewall off, ip_forward left alone
    assert lab.host("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"  # the operator's
    assert "firewall backend: nftables" in lab.plugin_log_tail(400)


def test_seed_case_and_egress_by_the_parent(e29):
    lab = e29
    lab.serve_peer_echo(lab.c1_ns, 7020)
    before = lab.dump_host_state()
    with network(lab, "front", "--opt", "parent=eth1", "--subnet", "10.40.0.0/24"), containers(lab) as names:
        run(lab, names, "web29", "--network", "front", "-p", "4020:80", cmd=web_cmd("hello29"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4020/")) == "hello29\n"
        assert ("tcp", "192.168.101.2", 4020) in lab.published_ports()
        out = lab.docker("exec", "web29", "sh", "-c", "nc 198.51.100.10 7020 </dev/null").stdout.strip()
        assert out == "192.168.101.2"  # egress leaves by eth1, with its address
        assert "multinic" not in lab.host("iptables-nft-save").stdout  # nothing written to iptables
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=10)


def test_dual_stack_seed_case_egress_isolation_and_hairpin(e29):
    """IPv6 through the native backend's ``ip6 multinic`` beside Engine 29's ``ip6 docker-bridges``: the port on
    eth1's IPv6 address answered by eth1, egress with eth1's stable IPv6 address, hairpin from a sibling,
    isolation from another multinic network, IPv6 forwarding turned on by multinic (Docker leaves it) and put
    back, nothing in ip6tables, and the host byte-identical afterwards."""
    lab = e29
    lab.serve_peer_echo(lab.c1_ns, 7027, "::")
    before = lab.dump_host_state()
    url = f"http://[{HOST6_ETH1}]:4027/"
    with network(lab, "dual29", "--ipv6", "--opt", "parent=eth1", "--subnet", "10.47.0.0/24", "--subnet",
                 "fd00:47::/64"), \
            network(lab, "other29", "--ipv6", "--opt", "parent=eth1", "--subnet", "10.48.0.0/24", "--subnet",
                    "fd00:48::/64"), containers(lab) as names:
        run(lab, names, "web29v6", "--network", "dual29", "-p", "4027:80", cmd=web_cmd("hello29v6"))
        run(lab, names, "peer29v6", "--network", "dual29")
        run(lab, names, "other29v6", "--network", "other29")
        assert wait_for(lambda: lab.http_get(lab.c1_ns, url)) == "hello29v6\n"
        assert ("tcp", HOST6_ETH1, 4027) in lab.published_ports()
        assert "table ip6 multinic" in lab.host("nft", "list", "tables").stdout
        assert lab.host("sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
        out = lab.docker("exec", "web29v6", "sh", "-c", f"nc -w 3 {C1_ADDR6} 7027 </dev/null", check=False)
        assert out.stdout.strip() == HOST6_ETH1  # egress by eth1, from its stable address
        got = lab.docker("exec", "peer29v6", "sh", "-c", f"timeout 5 wget -qO- {url}", check=False)
        assert got.stdout == "hello29v6\n", got.stderr  # hairpin
        assert fetch(lab, "other29v6", "http://[fd00:47::2]/") == ""  # isolated from the other network
        assert "MULTINIC" not in lab.host("ip6tables-nft-save").stdout  # nothing written to ip6tables
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=10), lab.dump_host_state()


def test_the_users_own_nftables_filter_holds_for_multinic_ports(e29):
    """No DOCKER-USER in nftables mode: Docker tells users to write their own table with a base chain on the
    forward hook. A drop there is final for multinic's published ports too (every base chain runs)."""
    lab = e29
    user = ("table inet userfw {\n chain forward {\n  type filter hook forward priority filter; policy accept;\n"
            "  ip saddr 198.51.100.10 tcp dport 80 drop\n }\n}\n")
    with network(lab, "userfw", "--opt", "parent=eth1", "--subnet", "10.46.0.0/24"), containers(lab) as names:
        run(lab, names, "ufw-web", "--network", "userfw", "-p", "4026:80", cmd=web_cmd("filtered"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4026/")) == "filtered\n"
        lab.run(lab.host_ns, "nft", "-f", "-", input=user)
        try:
            assert lab.http_get(lab.c1_ns, "http://192.168.101.2:4026/", timeout=2) is None
        finally:
            lab.host("nft", "delete", "table", "inet", "userfw")
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4026/")) == "filtered\n"


def test_isolation_from_multinic_and_from_dockers_bridges(e29):
    lab = e29
    with across_two_networks(lab, "iso", ("10.41.0.0/24", "10.42.0.0/24"), (4021, 4022)) as (ip_a, _ip_b, names):
        run(lab, names, "iso-d", cmd=web_cmd("from-docker0"))  # Docker's default bridge
        ip_d = inspect_ip(lab, "iso-d", "bridge")
        assert fetch(lab, "iso-a", f"http://{ip_d}/") == "" and fetch(lab, "iso-d", f"http://{ip_a}/") == ""
        assert fetch(lab, "iso-d", f"http://{ip_d}/") == "from-docker0\n"  # Docker's bridge works


def test_hairpin_from_the_host_and_from_a_container(e29):
    lab = e29
    with network(lab, "hair", "--opt", "parent=eth1", "--subnet", "10.43.0.0/24"), containers(lab) as names:
        run(lab, names, "hair-web", "--network", "hair", "-p", "4023:80", cmd=web_cmd("hairpin"))
        run(lab, names, "hair-cli", "--network", "hair")
        assert wait_for(lambda: lab.http_get(lab.host_ns, "http://192.168.101.2:4023/")) == "hairpin\n"
        out = wait_for(lambda: lab.docker("exec", "hair-cli", "sh", "-c",
                                          "timeout 3 wget -qO- http://192.168.101.2:4023/", check=False).stdout)
        assert out == "hairpin\n"


def test_plugin_and_dockerd_restart(e29):
    lab = e29
    with network(lab, "rst", "--opt", "parent=eth1", "--subnet", "10.44.0.0/24"), containers(lab) as names:
        run(lab, names, "rst-web", "--network", "rst", "--restart", "always", "-p", "4024:80", cmd=web_cmd("again"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4024/")) == "again\n"
        lab.stop_plugin()
        lab.start_plugin()
        assert lab.http_get(lab.c1_ns, "http://192.168.101.2:4024/") == "again\n"
        lab.stop_dockerd(remove_containers=False)
        lab.start_dockerd()  # Engine 29 writes its tables again at start
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4024/", timeout=2),
                        timeout=60) == "again\n"


def test_reboot(e29):
    """dockerd stops, the kernel loses everything (multinic's objects, both Docker's and multinic's
    tables), the plugin starts first (as the service orders it), then dockerd and its restarting container."""
    lab = e29
    before = lab.dump_host_state()
    with network(lab, "boot", "--opt", "parent=eth1", "--subnet", "10.45.0.0/24"), containers(lab) as names:
        run(lab, names, "boot-web", "--network", "boot", "--restart", "always", "-p", "4025:80", cmd=web_cmd("up"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4025/")) == "up\n"
        lab.stop_dockerd(remove_containers=False)
        lab.stop_plugin()
        lab.reboot_wipe()
        assert "multinic" not in lab.host("nft", "list", "tables").stdout
        lab.start_plugin()
        lab.start_dockerd()
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4025/", timeout=2),
                        timeout=60) == "up\n"
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=20), lab.dump_host_state()


def test_churn_leaves_the_host_byte_identical(e29):
    lab = e29
    before = lab.dump_host_state()
    workers = 3
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = sum(pool.map(lambda w: worker_loop(lab, w, CHURN_CYCLES // workers), range(workers)))
    assert done == CHURN_CYCLES // workers * workers
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=20)


def test_fuzzer(e29, tmp_path, monkeypatch):
    """The kernel-level fuzzer (tests/integration/test_hostile_input.py) in this lab's host, with the
    plugin's PATH: every refusal changes nothing, nothing answers 5xx, the teardown leaves nothing."""
    # The integration tests' own xtables lock (their conftest sets it per session; this one is not there)
    monkeypatch.setenv("XTABLES_LOCKFILE", str(tmp_path / "xtables.lock"))
    from tests.integration.test_hostile_input import SEED, fuzz
    from tests.nsutil import in_netns

    lab = e29
    lab.stop_plugin()  # one multinic per host: the fuzzer's Driver is it for now
    before = lab.dump_host_state()
    stats = in_netns(lab.host_ns, fuzz, str(tmp_path / "state"), FUZZ_COUNT, SEED, lab.plugin_env()["PATH"])
    print(f"\nfuzz in Engine 29's nftables mode: {stats['requests']} requests in {stats['seconds']} s, "
          f"statuses {stats['statuses']}")
    assert stats["firewall"] == "nftables" and not stats["changed"] and not stats["left_behind"]
    assert lab.dump_host_state() == before

