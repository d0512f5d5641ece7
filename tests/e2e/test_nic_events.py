"""The parent NIC readdressed under a running container (a DHCP renewal, a moved secondary IP):
its published port moves to the new address, nothing stays on the old one, egress follows. The
convergence time is measured and printed (the bound, 10 s, only catches a broken watcher).
"""

from __future__ import annotations

import time

from tests.e2e.helpers import containers, network, run, wait_for, web_cmd

PORT = 4090
BOUND = 10.0


def readdress(lab, old: str, new: str) -> None:
    # delete first: removing a primary also removes secondaries (promote_secondaries=0)
    lab.host("sh", "-c", f"ip addr del {old}/24 dev eth1; ip addr add {new}/24 dev eth1")


def test_published_port_follows_a_readdressed_parent(mn):
    lab = mn
    before = lab.dump_host_state()
    lab.serve_peer_echo(lab.c1_ns, 7090)
    try:
        with network(lab, "nicnet", "--opt", "parent=eth1", "--subnet", "10.46.0.0/24"), containers(lab) as names:
            run(lab, names, "nicweb", "--network", "nicnet", "-p", f"{PORT}:80", cmd=web_cmd("moved"))
            assert wait_for(lambda: lab.http_get(lab.c1_ns, f"http://192.168.101.2:{PORT}/")) == "moved\n"
            readdress(lab, "192.168.101.2", "192.168.101.3")
            t0 = time.monotonic()
            while ("tcp", "192.168.101.3", PORT) not in lab.published_ports():
                assert time.monotonic() - t0 < BOUND, lab.plugin_log_tail()
                time.sleep(0.02)
            in_kernel = time.monotonic() - t0
            while lab.http_get(lab.c1_ns, f"http://192.168.101.3:{PORT}/", timeout=1) != "moved\n":
                assert time.monotonic() - t0 < BOUND, lab.plugin_log_tail()
            elapsed = time.monotonic() - t0
            print(f"\nreaddressed parent (engine {lab.engine}): DNAT on the new address after "
                  f"{in_kernel * 1000:.0f} ms, first HTTP answer through it after {elapsed * 1000:.0f} ms")
            assert not any(host == "192.168.101.2" for _proto, host, _port in lab.published_ports())
            out = lab.docker("exec", "nicweb", "sh", "-c", "nc 198.51.100.10 7090 </dev/null").stdout.strip()
            assert out == "192.168.101.3"
    finally:
        if "192.168.101.3/" in lab.host("ip", "-4", "addr", "show", "eth1").stdout:
            readdress(lab, "192.168.101.3", "192.168.101.2")
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=BOUND), "host not back to its state before"
