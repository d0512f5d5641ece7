"""The one writer against the real kernel: each verb pays for its own change only, and a kernel
that no longer holds what the state says is healed by the whole-host path."""

from __future__ import annotations

import subprocess
import sys

from plugin.kernel.firewall.model import dnat_bucket
from plugin.plan.driver import Driver
from plugin.plan.state import Store
from tests.integration.conftest import chain_text, flush_ours, published, running_healer, settings
from tests.integration.test_datapath import EID, NID, attach_container, call, create_network, detach_and_remove
from tests.nsutil import sh

PORT = {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 4000, "HostPortEnd": 4000}


def _spawns_of_verbs(state_dir: str, ports: list, address6: str = "", transactions: bool = False) -> dict:
    """Run CreateEndpoint, Join, Leave, DeleteEndpoint here, recording every process started (and with
    ``transactions`` the libnftables transactions each ran, under "nft transactions"; the firewall flavour is
    detected once per process, at plugin start: done first here)."""
    from plugin.kernel.firewall import nft, select

    select(settings())
    spawned: list[str] = []
    real = subprocess.Popen.__init__

    def record(self, args, *a, **kw):  # noqa: ANN001 - subprocess.Popen's own signature
        spawned.append(" ".join(map(str, args if isinstance(args, (list, tuple)) else [args]))[:80])
        return real(self, args, *a, **kw)

    subprocess.Popen.__init__ = record
    runs: list[str] = []
    real_run = nft.run
    nft.run = lambda commands: runs.append(commands) or real_run(commands)
    out: dict = {}
    counted: dict[str, int] = {}
    ref = {"NetworkID": NID, "EndpointID": EID}
    try:
        bodies = {
            "CreateEndpoint": {**ref, "Interface": {"Address": "10.10.0.2/24", "AddressIPv6": address6}},
            "Join": {**ref, "SandboxKey": "", "Options": {"com.docker.network.portmap": ports}},
            "Leave": ref,
            "DeleteEndpoint": ref,
        }
        for verb, body in bodies.items():
            spawned.clear()
            runs.clear()
            resp = call(state_dir, verb, body)
            assert resp["status"] == 200, (verb, resp)
            out[verb] = [s.split()[0].rsplit("/", 1)[-1] for s in spawned]
            counted[verb] = len(runs)
    finally:
        subprocess.Popen.__init__ = real
        nft.run = real_run
    if transactions:
        out["nft transactions"] = counted
    return out


def test_verbs_without_ports_start_no_process_and_with_ports_one_commit(topo, backend):
    """Without ports no verb starts a process; with ports, the native backend starts none either (one
    libnftables transaction in-process), iptables-nft one ``iptables-nft-restore`` per Join and Leave."""
    before = topo.dump()
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    quiet = topo.in_host(_spawns_of_verbs, topo.state_dir, [])
    assert quiet == {"CreateEndpoint": [], "Join": [], "Leave": [], "DeleteEndpoint": []}
    loud = topo.in_host(_spawns_of_verbs, topo.state_dir, [PORT])
    assert loud["CreateEndpoint"] == [] and loud["DeleteEndpoint"] == []
    restore = [] if backend == "nftables" else ["iptables-nft-restore"]
    assert loud["Join"] == restore
    assert loud["Leave"][:len(restore)] == restore and set(loud["Leave"][len(restore):]) <= {"conntrack"}
    assert call_in(topo, "DeleteNetwork", {"NetworkID": NID})["status"] == 200
    assert topo.dump() == before


def test_dual_stack_verbs_with_ports_start_no_process_with_the_native_backend(topo, backend):
    """A dual-stack Join and Leave with a port: the native backend writes both families in-process (one
    transaction per table, nothing started); iptables-nft one restore per family."""
    from tests.integration.test_datapath6 import create_dual_stack

    before = topo.dump()
    assert create_dual_stack(topo, {"parent": "eth1"})["status"] == 200
    loud = topo.in_host(_spawns_of_verbs, topo.state_dir, [PORT], "fd00:10::2/64", True)
    assert "table ip6 multinic" in sh(topo.host, "nft list tables") or backend != "nftables"
    restores = [] if backend == "nftables" else ["ip6tables-nft-restore", "iptables-nft-restore"]
    assert loud["CreateEndpoint"] == [] and loud["DeleteEndpoint"] == []
    assert sorted(loud["Join"]) == restores, loud
    assert sorted(s for s in loud["Leave"] if s != "conntrack") == restores, loud
    if backend == "nftables":  # both tables in ONE libnftables transaction per verb
        assert loud["nft transactions"] == {"CreateEndpoint": 0, "Join": 1, "Leave": 1, "DeleteEndpoint": 0}
    assert call_in(topo, "DeleteNetwork", {"NetworkID": NID})["status"] == 200
    assert topo.dump() == before


def call_in(t, verb, body):
    return t.in_host(call, t.state_dir, verb, body)


def dnat_rule(ns: str, port: int) -> str:
    """The one DNAT rule of ``port``, wherever it is (its endpoint's MULTINIC-DNAT-xx bucket)."""
    found = [ln for ln in sh(ns, "iptables-nft-save -t nat").splitlines()
             if ln.startswith("-A MULTINIC-DNAT-") and f"--dport {port} " in ln]
    assert len(found) == 1, found
    return found[0]


def test_rule_deleted_behind_our_back_is_healed_by_the_next_verb(topo, backend):
    """Leave's edit deletes a DNAT rule (a map element) someone already removed: nf_tables refuses the
    whole edit and the writer re-applies the whole host; nothing is left behind."""
    before = topo.dump()
    create_network(topo, {"parent": "eth1"})
    attach_container(topo, [PORT])
    assert published(topo.host) == {("tcp", "192.168.101.2", 4000)}
    if backend == "nftables":
        sh(topo.host, "nft delete element ip multinic published { 192.168.101.2 . tcp . 4000 }")
    else:
        rule = dnat_rule(topo.host, 4000)
        assert rule.startswith(f"-A {dnat_bucket(EID)} ")  # the endpoint's bucket
        sh(topo.host, "iptables-nft -t nat " + rule.replace("-A ", "-D ", 1))
    assert published(topo.host) == set()
    detach_and_remove(topo)
    assert topo.dump() == before


def test_a_leave_that_falls_back_to_the_whole_host_still_forgets_its_ports_flows(topo, backend):
    """The same with a UDP port whose client keeps sending: the fallback to the whole host still forgets
    the port's conntrack flows (else the client would stay on the old DNAT); a flow of another port stays."""
    before = topo.dump()
    create_network(topo, {"parent": "eth1"})
    attach_container(topo, [{"Proto": 17, "IP": "", "Port": 90, "HostIP": "", "HostPort": 4091, "HostPortEnd": 4091}])
    for port in (4091, 4092):
        send = ("import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                f"s.sendto(b'x',('192.168.101.2',{port}))")
        sh(topo.c1, f"{sys.executable} -c \"{send}\"")
    flows = "conntrack -L -p udp --orig-port-dst {} 2>/dev/null | wc -l"
    assert (sh(topo.host, flows.format(4091)).strip(), sh(topo.host, flows.format(4092)).strip()) == ("1", "1")
    if backend == "nftables":
        sh(topo.host, "nft delete element ip multinic published { 192.168.101.2 . udp . 4091 }")
    else:
        sh(topo.host, "iptables-nft -t nat " + dnat_rule(topo.host, 4091).replace("-A ", "-D ", 1))
    detach_and_remove(topo)
    assert (sh(topo.host, flows.format(4091)).strip(), sh(topo.host, flows.format(4092)).strip()) == ("0", "1")
    assert topo.dump() == before


def test_missing_jump_is_the_healers_job(topo, backend):
    """The request path does not check jumps (that costs a read of the whole table); the whole-host
    writer the healer runs puts a deleted jump back, once. Native: the jump of our forward base chain;
    beside Docker's iptables, also the opening of its FORWARD (from DOCKER-USER)."""
    before = topo.dump()
    create_network(topo, {"parent": "eth1"})
    if backend == "nftables":
        sh(topo.host, "nft flush chain ip multinic filter-FORWARD")
    jump = "DOCKER-USER -m comment --comment multinic -j MULTINIC-FORWARD"
    sh(topo.host, f"iptables-nft -D {jump}")
    attach_container(topo, [PORT])  # the edit still applies: our chains are there
    assert "MULTINIC-FORWARD" not in sh(topo.host, "iptables-nft -S DOCKER-USER")
    topo.in_host(lambda: Driver(Store(topo.state_dir), settings()).reconcile() and None)
    assert sh(topo.host, "iptables-nft -S DOCKER-USER").count("-j MULTINIC-FORWARD") == 1
    if backend == "nftables":
        assert "jump MULTINIC-FORWARD" in sh(topo.host, "nft list chain ip multinic filter-FORWARD")
    detach_and_remove(topo)
    assert topo.dump() == before


def _drifts(state_dir: str) -> tuple[list[str], list[str]]:
    from plugin.kernel import writer
    from plugin.kernel.firewall import select
    from plugin.loops import healer

    state = Store(state_dir).load()
    return healer.drift(state), select(settings()).v4.drift(writer.desired(state).firewall)


def test_healer_sees_no_drift_on_a_host_the_writer_made_and_sees_what_others_delete(topo, backend):
    """The healer's checks read the kernel as the writer wrote it (else it would rewrite the
    host on every period): after verbs, no drift; a deleted rule, route, jump or published port is seen."""
    before = topo.dump()
    create_network(topo, {"parent": "eth1"})
    attach_container(topo, [PORT])
    assert topo.in_host(_drifts, topo.state_dir) == ([], [])
    flush_ours(topo.host, "mangle", "MULTINIC-PREROUTING")
    assert topo.in_host(_drifts, topo.state_dir)[1]
    sh(topo.host, "iptables-nft -D DOCKER-USER -m comment --comment multinic -j MULTINIC-FORWARD")
    sh(topo.host, "ip rule del pref 10002")
    routes, fw = topo.in_host(_drifts, topo.state_dir)
    assert routes and any("jump" in r for r in fw)
    if backend == "nftables":
        sh(topo.host, "nft delete element ip multinic published { 192.168.101.2 . tcp . 4000 }")
        assert any("map published" in r for r in topo.in_host(_drifts, topo.state_dir)[1])
    topo.in_host(lambda: Driver(Store(topo.state_dir), settings()).reconcile() and None)
    assert topo.in_host(_drifts, topo.state_dir) == ([], [])
    detach_and_remove(topo)
    assert topo.dump() == before


def _cleanup(state_dir: str) -> int:
    from plugin.ops.cli import main

    return main(["--state-dir", state_dir, "cleanup"])


def test_cleanup_goes_through_the_writer_and_puts_rp_filter_back(topo):
    sh(topo.host, "sysctl -qw net.ipv4.conf.eth1.rp_filter=1")
    before = topo.dump()
    create_network(topo, {"parent": "eth1"})
    attach_container(topo, [PORT])
    assert sh(topo.host, "cat /proc/sys/net/ipv4/conf/eth1/rp_filter").strip() == "2"
    src = "mnc" + EID[:12]
    sh(topo.k, f"ip link set eth0 down; ip link set eth0 name {src}; ip link set {src} netns {topo.host}")
    assert topo.in_host(_cleanup, topo.state_dir) == 0
    assert topo.dump() == before
    assert Store(topo.state_dir).load().parents == {}


def _deferred_deletes(state_dir: str) -> dict[str, object]:
    """``multinic serve``'s Driver: DeleteEndpoint retires the veth and a thread deletes it
    after the response; the same endpoint coming back at once gets a fresh veth."""
    import json as _json

    from plugin.api.http import create_app
    from plugin.kernel import reaper

    client = create_app(Driver(Store(state_dir), settings(), defer_deletes=True)).test_client()

    def verb(name: str, body: dict) -> None:
        resp = client.post(f"/NetworkDriver.{name}", data=_json.dumps(body))
        assert resp.status_code == 200 and not _json.loads(resp.data).get("Err"), (name, resp.data)

    ref = {"NetworkID": NID, "EndpointID": EID}
    host_veth = "mnh" + EID[:12]
    seen: dict[str, object] = {}
    verb("CreateEndpoint", {**ref, "Interface": {"Address": "10.10.0.2/24"}})
    verb("DeleteEndpoint", ref)
    seen["right_after"] = sh_alias(host_veth)
    reaper.wait()
    seen["after_thread"] = sh_alias(host_veth)
    verb("CreateEndpoint", {**ref, "Interface": {"Address": "10.10.0.2/24"}})
    verb("DeleteEndpoint", ref)
    verb("CreateEndpoint", {**ref, "Interface": {"Address": "10.10.0.2/24"}})  # before the thread ran
    reaper.wait()
    seen["recreated"] = sh_alias(host_veth)
    verb("DeleteEndpoint", ref)
    reaper.wait()
    return seen


def sh_alias(name: str) -> str | None:
    """The link's alias and master as `ip -d link` shows them, None if there is no such link."""
    proc = subprocess.run(["ip", "-o", "link", "show", name], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    words = proc.stdout.split()
    master = words[words.index("master") + 1] if "master" in words else ""
    alias = words[words.index("alias") + 1] if "alias" in words else ""
    return f"{alias} master={master}"


def test_a_removed_endpoints_veth_is_deleted_after_the_response(topo):
    before = topo.dump()
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    seen = topo.in_host(_deferred_deletes, topo.state_dir)
    bridge = "mn-" + NID[:12]
    assert seen["right_after"] in (None, f"multinic:gone:{EID} master={bridge}")
    assert seen["after_thread"] is None
    assert seen["recreated"] == f"multinic:ep:{EID} master={bridge}"
    assert call_in(topo, "DeleteNetwork", {"NetworkID": NID})["status"] == 200
    assert topo.dump() == before


def _retire_then_reconcile(state_dir: str) -> tuple[str | None, str | None]:
    from plugin.kernel import links, writer
    from plugin.kernel.firewall import select
    from plugin.kernel.netlink import Rtnl

    host_veth = "mnh" + EID[:12]
    with Rtnl() as rt:
        links.retire_link(rt, host_veth)  # as DeleteEndpoint does, then the plugin dies
    retired = sh_alias(host_veth)
    writer.reconcile(Store(state_dir).load(), None, select(settings()))
    return retired, sh_alias(host_veth)


def test_a_retired_veth_left_by_a_crash_is_removed_by_the_whole_host_writer(topo):
    before = topo.dump()
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    assert call_in(topo, "CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                             "Interface": {"Address": "10.10.0.2/24"}})["status"] == 200
    ep = Store(topo.state_dir).load().endpoints
    state = Store(topo.state_dir)
    with state.locked() as s:  # the endpoint is forgotten (saved) but its veth was only retired
        s.endpoints.clear()
        state.save(s)
    assert ep
    retired, after = topo.in_host(_retire_then_reconcile, topo.state_dir)
    assert retired.startswith("multinic:gone:") and after is None
    assert call_in(topo, "DeleteNetwork", {"NetworkID": NID})["status"] == 200
    assert topo.dump() == before


def test_the_healer_repairs_on_kernel_events_not_only_on_its_period(topo, tmp_path, backend):
    """A deleted ip rule of ours (netlink event) and a flushed chain of ours (nf_tables event)
    are put back although the healer's periods are an hour long."""
    import time

    before = topo.dump()
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    attach_container(topo, [PORT])

    def eventually(check, what: str) -> None:
        deadline = time.monotonic() + 20
        while not check():
            assert time.monotonic() < deadline, f"not repaired: {what}"
            time.sleep(0.2)

    with running_healer(topo, tmp_path / "healer.log", check_interval=3600, firewall_check_interval=3600,
                        full_interval=3600, gc_interval=3600):
        sh(topo.host, "ip rule del pref 10002")
        eventually(lambda: "10.10.0.0/24" in sh(topo.host, "ip rule show pref 10002"), "ip rule")
        flush_ours(topo.host, "nat", "MULTINIC-POSTROUTING")
        eventually(lambda: "MASQUERADE" in chain_text(topo.host, "nat", "MULTINIC-POSTROUTING").upper(), "chain")
    detach_and_remove(topo)
    assert topo.dump() == before


def test_a_new_endpoints_veth_is_enslaved_up_tagged_and_hairpinned(topo):
    """CreateEndpoint's raw netlink create: the host side on the bridge, up, tagged, hairpin on,
    the network's MTU on both sides, the peer with the MAC from the address."""
    before = topo.dump()
    assert create_network(topo, {"parent": "eth1", "mtu": "1400"})["status"] == 200
    assert call_in(topo, "CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                             "Interface": {"Address": "10.10.0.2/24"}})["status"] == 200
    host = sh(topo.host, f"ip -d link show mnh{EID[:12]}")
    peer = sh(topo.host, f"ip -d link show mnc{EID[:12]}")
    assert f"master mn-{NID[:12]}" in host and ",UP," in host and "mtu 1400" in host
    assert "hairpin on" in host and f"alias multinic:ep:{EID}" in host
    assert "mtu 1400" in peer and "link/ether 02:42:0a:0a:00:02" in peer
    assert call_in(topo, "DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID})["status"] == 200
    assert call_in(topo, "DeleteNetwork", {"NetworkID": NID})["status"] == 200
    assert topo.dump() == before


def _firewall_events_of_us_and_of_others() -> tuple[list[int], list[int]]:
    """In the host namespace: the healer's subscription, a transaction of this process through
    libnftables, then one of the ``nft`` command."""
    from plugin.kernel import events
    from plugin.kernel.firewall import nft

    listener = events.Listener()
    try:
        nft.run("add table ip mnevt\nadd chain ip mnevt c\nadd rule ip mnevt c accept\ndelete table ip mnevt")
        ours = listener.burst(0.5, 0.1, 1.0)
        subprocess.run(["nft", "add table ip mnevt; add chain ip mnevt c; delete table ip mnevt"], check=True)
        theirs = listener.burst(0.5, 0.1, 1.0)
    finally:
        listener.close()
    return [e.kind for e in ours or ()], [e.kind for e in theirs or ()]


def test_the_healer_is_not_woken_by_the_firewall_changes_its_own_process_made(topo):
    """The loops run in the worker that writes the native firewall: its own transactions (a Leave's
    port removal, a network's chains) are not drift to check; another process's deletions still are."""
    from plugin.kernel import events

    ours, theirs = topo.in_host(_firewall_events_of_us_and_of_others)
    assert events.FIREWALL not in ours
    assert events.FIREWALL in theirs
