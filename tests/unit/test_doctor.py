"""doctor's pure checks over hand-built facts, and the file parsing (networkd.conf + drop-ins, NetworkManager's
device files, a /proc tree) against a tmp root. The kernel-facing halves are in tests/integration/test_doctor.py,
the Docker-facing ones in tests/e2e/test_doctor.py."""

from __future__ import annotations

import os

import pytest

from plugin.kernel.firewall.view import parse as parse_iptables_save
from plugin.ops import doctor
from plugin.ops.doctor import ERROR, OK, SKIP, WARN, Facts, Proc, Result
from plugin.ops.doctor import gather as hostfacts
from plugin.ops.doctor.gather import HostPaths
from plugin.plan.state import EndpointRecord, NetworkRecord, State
from plugin.settings import DEFAULT_SOCKET, Settings

NID = "a" * 64
EID = "e" * 64


def state(**kw) -> State:
    net = NetworkRecord(id=NID, bridge="mn-aaaaaaaaaaaa", subnet="10.10.0.0/24", gateway="10.10.0.1/24",
                        parent="eth1", parent_gateway="192.168.101.1", table=20000, mark_slot=1, **kw)
    return State(networks={NID: net})


def one(results: list[Result]) -> Result:
    assert len(results) == 1, results
    return results[0]


# -- exit code and rendering -------------------------------------------------------------------
def test_exit_code_is_worst_verdict():
    assert doctor.exit_code([]) == 0
    assert doctor.exit_code([Result("a", OK, ""), Result("b", SKIP, "")]) == 0
    assert doctor.exit_code([Result("a", OK, ""), Result("b", WARN, "")]) == 1
    assert doctor.exit_code([Result("a", WARN, ""), Result("b", ERROR, "x")]) == 2


def test_render_prints_fix_only_for_failures():
    text = doctor.render([Result("ip_forward", ERROR, "off", "sysctl -w x=1\nline two"), Result("b", OK, "fine", "no")])
    assert "[FAIL] ip_forward" in text and "fix: sysctl -w x=1" in text and "     line two" in text
    assert "no" not in text.split("fine")[1].split("\n")[0]
    assert text.rstrip().endswith("exit 2")


# -- networkd ---------------------------------------------------------------------------------
def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_networkd_defaults_to_managing_foreign_rules_and_the_dropin_fixes_it(tmp_path):
    paths = HostPaths(root=str(tmp_path))
    write(tmp_path / "etc/systemd/networkd.conf", "[Network]\n#ManageForeignRoutingPolicyRules=yes\n")
    settings, files = hostfacts.networkd_config(paths)
    f = Facts(networkd_running=True, networkd_settings=settings)
    r = one(doctor.check_networkd(f))
    assert r.status == ERROR and "ManageForeignRoutingPolicyRules=yes" in r.message
    assert "ManageForeignRoutes=yes" in r.message
    assert doctor.NETWORKD_DROPIN_PATH in r.fix and "ManageForeignRoutingPolicyRules=no" in r.fix
    # the shipped drop-in is the one doctor prints, and installing it fixes the verdict
    shipped = doctor.REPO_CONTRIB / "systemd/networkd.conf.d/multinic.conf"
    assert shipped.read_text() == doctor.NETWORKD_DROPIN
    write(tmp_path / "etc/systemd/networkd.conf.d/multinic.conf", shipped.read_text())
    settings, files = hostfacts.networkd_config(paths)
    assert files[-1].endswith("networkd.conf.d/multinic.conf")
    assert one(doctor.check_networkd(Facts(networkd_running=True, networkd_settings=settings))).status == OK


def test_networkd_dropin_order_and_precedence(tmp_path):
    paths = HostPaths(root=str(tmp_path))
    write(tmp_path / "etc/systemd/networkd.conf",
          "[Network]\nManageForeignRoutingPolicyRules=no\nManageForeignRoutes=no\n")
    # a later drop-in (by name) turns it back on ...
    write(tmp_path / "usr/lib/systemd/networkd.conf.d/90-vendor.conf", "[Network]\nManageForeignRoutes=yes\n")
    settings, _ = hostfacts.networkd_config(paths)
    assert settings["ManageForeignRoutes"] == "yes"
    assert one(doctor.check_networkd(Facts(networkd_running=True, networkd_settings=settings))).status == ERROR
    # ... and an /etc drop-in of the same name masks the vendor's
    write(tmp_path / "etc/systemd/networkd.conf.d/90-vendor.conf", "[Network]\nManageForeignRoutes=false\n")
    settings, _ = hostfacts.networkd_config(paths)
    assert settings["ManageForeignRoutes"] == "false"
    assert one(doctor.check_networkd(Facts(networkd_running=True, networkd_settings=settings))).status == OK


def test_networkd_not_running_is_fine():
    r = one(doctor.check_networkd(Facts(networkd_running=False)))
    assert r.status == OK and "not running" in r.message


def fake_proc(root, pid: int, comm: str, cmdline: str, ppid: int = 1, netns: str | None = None) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(cmdline.replace(" ", "\0").encode() + b"\0")
    (d / "status").write_text(f"Name:\t{comm}\nPPid:\t{ppid}\n")
    (d / "ns").mkdir()
    os.symlink(netns or os.readlink("/proc/self/ns/net"), d / "ns" / "net")


def test_process_scan_finds_networkd_nm_and_multinic_in_this_netns_only(tmp_path):
    proc = tmp_path / "proc"
    fake_proc(proc, 10, "systemd-network", "/lib/systemd/systemd-networkd")
    fake_proc(proc, 11, "NetworkManager", "/usr/sbin/NetworkManager --no-daemon")
    fake_proc(proc, 20, "multinic", "/usr/bin/python3 /usr/local/bin/multinic serve --socket /run/x.sock")
    fake_proc(proc, 21, "multinic", "/usr/bin/python3 /usr/local/bin/multinic serve --socket /run/x.sock", ppid=20)
    fake_proc(proc, 30, "python3", "python -m plugin.cli serve --socket /run/y.sock", netns="net:[1]")
    fake_proc(proc, 40, "python3", "python -m plugin.cli --state-dir /x status")
    procs = hostfacts.scan_processes(str(proc))
    assert {p.pid for p in procs} == {10, 11, 20, 21, 40}  # 30 lives in another netns
    servers = hostfacts.multinic_servers(procs)
    assert [p.pid for p in servers] == [20, 21]
    assert one(doctor.check_instances(Facts(processes=servers))).status == OK  # a master and its worker


# -- NetworkManager ---------------------------------------------------------------------------
def test_nm_device_files_say_which_links_it_manages(tmp_path):
    paths = HostPaths(root=str(tmp_path / "root"))
    write(tmp_path / "root/run/NetworkManager/devices/3", "[device]\nmanaged=true\n")
    write(tmp_path / "root/run/NetworkManager/devices/4", "[device]\nmanaged=false\n")
    write(tmp_path / "root/run/NetworkManager/devices/7", "[device]\nmanaged=true\n")
    managed = hostfacts.nm_managed(paths, {3: "eth1", 4: "eth2", 7: "mn-aaaaaaaaaaaa"})
    assert managed == {"eth1": True, "eth2": False, "mn-aaaaaaaaaaaa": True}
    f = Facts(nm_running=True, nm_managed=managed, state=state(),
              parents={"eth1": doctor.ParentInfo("eth1", True, True, ["192.168.101.2/24"])})
    results = doctor.check_network_manager(f)
    assert [r.status for r in results] == [WARN, WARN]
    assert "eth1" in results[0].message and "nmcli device set eth1 managed no" in results[0].fix
    assert "mn-aaaaaaaaaaaa" in results[1].message and doctor.NM_DROPIN_PATH in results[1].fix
    assert (doctor.REPO_CONTRIB / "NetworkManager/conf.d/multinic.conf").read_text() == doctor.NM_DROPIN


def test_nm_absent_or_not_managing_parents():
    assert "not running" in one(doctor.check_network_manager(Facts(nm_running=False))).message
    f = Facts(nm_running=True, nm_managed={"eth0": True, "eth1": False},
              parents={"eth1": doctor.ParentInfo("eth1", True, True, ["192.168.101.2/24"])})
    assert one(doctor.check_network_manager(f)).status == OK


# -- Docker-facing checks (pure) --------------------------------------------------------------
def test_docker_unreachable_old_and_current():
    r = one(doctor.check_docker(Facts(docker_error="connection refused", docker_host="unix:///x.sock")))
    assert r.status == ERROR and "unix:///x.sock" in r.message and "DOCKER_HOST" in r.fix
    assert one(doctor.check_docker(Facts(docker_version="19.03.15", docker_api="1.40"))).status == ERROR
    r = one(doctor.check_docker(Facts(docker_version="28.5.2", docker_api="1.51")))
    assert r.status == OK and "28.5.2" in r.message


def test_engine_29_0_0_to_29_0_2_is_an_error_naming_moby_51554():
    for version in ("29.0.0", "29.0.2"):
        r = one(doctor.check_docker(Facts(docker_version=version, docker_api="1.52")))
        assert r.status == ERROR and "moby #51554" in r.message and "29.0.3" in r.fix
    assert one(doctor.check_docker(Facts(docker_version="29.0.3", docker_api="1.52"))).status == OK
    assert one(doctor.check_docker(Facts(docker_version="29.7.2", docker_api="1.52"))).status == OK


def test_ghosts_both_ways_and_young_endpoints_spared():
    st = state()
    st.endpoints[EID] = EndpointRecord(id=EID, network_id=NID, address="10.10.0.2/24", mac="02:42:0a:0a:00:02",
                                       host_veth="mnh", peer_veth="mnc", created=1000.0)
    other = "b" * 64
    f = Facts(state=st, now=1010.0, socket_path="/run/docker/plugins/multinic.sock",
              docker_networks={NID: {"name": "n1", "driver": "multinic", "endpoints": []},
                               other: {"name": "lost", "driver": "multinic", "endpoints": ["x" * 64]}})
    results = doctor.check_ghosts(f)
    assert [r.status for r in results] == [ERROR]  # the young endpoint is not called a ghost yet
    assert "lost (multinic)" in results[0].message and "docker network rm lost" in results[0].fix
    f.now = 2000.0
    f.docker_networks.pop(other)
    r = one(doctor.check_ghosts(f))
    assert r.status == WARN and EID[:12] in r.message
    f.docker_networks = {}
    assert "no longer has" in doctor.check_ghosts(f)[0].message
    assert one(doctor.check_ghosts(Facts(docker_networks=None))).status == SKIP


def test_ghosts_follow_a_managed_plugins_driver_name():
    f = Facts(state=State(), socket_path="/run/docker/plugins/abc/multinic.sock",
              plugins=[{"name": "multinic:latest", "id": "abc", "enabled": True}],
              docker_networks={NID: {"name": "n1", "driver": "multinic:latest", "endpoints": []},
                               "c" * 64: {"name": "bridge", "driver": "bridge", "endpoints": []}})
    r = one(doctor.check_ghosts(f))
    assert r.status == ERROR and "n1 (multinic:latest)" in r.message and "bridge" not in r.message


def test_two_instances_service_and_managed_plugin():
    f = Facts(legacy_socket_alive=True, legacy_socket_path="/run/docker/plugins/multinic.sock",
              plugins=[{"name": "multinic:latest", "id": "f" * 64, "enabled": True}])
    r = one(doctor.check_instances(f))
    assert r.status == ERROR and "legacy plugin on /run/docker/plugins/multinic.sock" in r.message
    assert "managed plugin multinic:latest" in r.message and "docker plugin disable" in r.fix
    f.plugins[0]["enabled"] = False
    assert one(doctor.check_instances(f)).status == OK
    f.processes = [Proc(5, 1, "x", "multinic serve"), Proc(9, 1, "y", "multinic serve")]
    assert one(doctor.check_instances(f)).status == ERROR


@pytest.mark.parametrize(
    ("health", "status", "words"),
    [
        ({"healthy": True, "version": "0.3.0"}, OK, "older Health shape"),
        ({"healthy": False, "version": "0.3.0"}, ERROR, "unhealthy"),
        ({"healthy": True, "loops": {"healer": {"alive": True}, "watcher": {"alive": True, "pid": 3}}}, OK,
         "alive: healer, watcher"),
        ({"healthy": True, "loops": {"healer": {"alive": True}, "watcher": {"alive": False}}}, ERROR, "watcher"),
        ({"healthy": True, "loops": [{"name": "healer", "alive": True}, {"name": "watcher", "alive": True}]}, OK,
         "alive"),
        ({"healthy": True, "healer": True, "watcher": {"running": False}}, ERROR, "watcher"),
        ({"healthy": True, "loops": {"healer": True}}, WARN, "not watcher"),
        # the shape with loops, heartbeats and problems spelled out
        ({"healthy": False, "problems": ["watcher: process 42 is dead (the supervisor restarts it)"],
          "serving": True, "loops": {"healer": {"pid": 41, "alive": True, "age": 1.0, "restarts": 0},
                                     "watcher": {"pid": 42, "alive": False, "age": 9.0, "restarts": 1},
                                     "nicwatch": {"pid": 43, "alive": True}}}, ERROR, "process 42 is dead"),
        ({"healthy": True, "problems": [], "serving": True,
          "loops": {"healer": {"alive": True}, "watcher": {"alive": True}, "nicwatch": {"alive": True}}}, OK,
         "alive: healer, nicwatch, watcher"),
    ],
)
def test_health_shapes(health, status, words):
    f = Facts(health=health, socket_stat={"mode": 0o140600, "uid": 0})
    results = doctor.check_health(f)
    assert any(r.status == status and words in r.message for r in results), results


def test_health_not_answering_and_no_socket():
    r = one(doctor.check_health(Facts(health_error="timed out", socket_stat={"mode": 0o140600, "uid": 0})))
    assert r.status == ERROR and "timed out" in r.message
    assert one(doctor.check_health(Facts())).status == SKIP


# -- firewall (iptables-save text parsed as the gatherer does) --------------------------------
DOCKER_NFT = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:MULTINIC-FORWARD - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -j DOCKER
-A DOCKER-USER -s 198.51.100.10/32 -j DROP
-A DOCKER-USER -m comment --comment multinic -j MULTINIC-FORWARD
-A DOCKER-USER -j RETURN
-A MULTINIC-FORWARD -i mn-aaaaaaaaaaaa -o mn-aaaaaaaaaaaa -j ACCEPT
COMMIT
"""
OURS = "-A DOCKER-USER -m comment --comment multinic -j MULTINIC-FORWARD\n"
USER_DROP = "-A DOCKER-USER -s 198.51.100.10/32 -j DROP\n"


def fw_facts(nft: str = DOCKER_NFT, legacy: str = "") -> Facts:
    return Facts(state=state(), br_netfilter_loaded=True, bridge_nf_call_iptables="1",
                 iptables={"nft": parse_iptables_save(nft), "legacy": parse_iptables_save(legacy)})


def test_healthy_docker_forward_layout_passes():
    """FORWARD enters multinic through DOCKER-USER, after the user's rules there, as Docker's own ports."""
    f = fw_facts()
    r = one(doctor.check_forward(f))
    assert r.status == OK and "after your 1 rule(s)" in r.message
    assert one(doctor.check_iptables_flavour(f)).status == OK
    assert one(doctor.check_br_netfilter(f)).status == OK


def test_our_jump_above_the_users_rules_in_docker_user_is_an_error():
    """As multinic used to insert it (at rule 1): the user's DROP would not hold for multinic's ports."""
    text = DOCKER_NFT.replace(USER_DROP + OURS, OURS + USER_DROP)
    r = one(doctor.check_forward(fw_facts(text)))
    assert r.status == ERROR and "rule 1 of 3" in r.message and "after your 1 rule(s)" in r.message
    assert r.fix.startswith("multinic reconcile")


def test_a_direct_forward_jump_beside_docker_user_is_an_error():
    direct = "-A FORWARD -m comment --comment multinic -j MULTINIC-FORWARD\n"
    text = DOCKER_NFT.replace("-A FORWARD -j DOCKER-USER\n", direct + "-A FORWARD -j DOCKER-USER\n")
    assert one(doctor.check_forward(fw_facts(text))).status == ERROR


def test_without_docker_user_forward_enters_multinic_first():
    text = "*filter\n:FORWARD DROP [0:0]\n:MULTINIC-FORWARD - [0:0]\n{}COMMIT\n"
    jump = "-A FORWARD -m comment --comment multinic -j MULTINIC-FORWARD\n"
    assert one(doctor.check_forward(fw_facts(text.format(jump)))).status == OK
    assert one(doctor.check_forward(fw_facts(text.format("")))).status == ERROR
    r = one(doctor.check_forward(fw_facts(text.format("-A FORWARD -i br0 -j ACCEPT\n" + jump))))
    assert r.status == WARN and "rule 2" in r.message


def test_chains_in_both_flavours_or_ours_elsewhere():
    r = one(doctor.check_iptables_flavour(fw_facts(DOCKER_NFT, DOCKER_NFT)))
    assert r.status == WARN and "both" in r.message
    ours_legacy = "*filter\n:MULTINIC-FORWARD - [0:0]\nCOMMIT\n"
    r = one(doctor.check_iptables_flavour(fw_facts(DOCKER_NFT.replace(":MULTINIC-FORWARD - [0:0]\n", "")
                                                   .replace("MULTINIC-FORWARD", "ACCEPT"), ours_legacy)))
    assert r.status == ERROR and "MULTINIC_FIREWALL=nft" in r.fix


def test_br_netfilter_not_loaded_warns_with_modprobe():
    f = fw_facts()
    f.br_netfilter_loaded = False
    r = one(doctor.check_br_netfilter(f))
    assert r.status == WARN and r.fix.startswith("modprobe br_netfilter")


def test_ip_forward_and_rp_filter_verdicts():
    assert one(doctor.check_ip_forward(Facts(ip_forward="0"))).status == ERROR
    f = Facts(rp_filter_all="0", parents={"eth1": doctor.ParentInfo("eth1", True, True, [], rp_filter="1")})
    r = one(doctor.check_rp_filter(f))
    assert r.status == ERROR and "sysctl -w net.ipv4.conf.eth1.rp_filter=2" in r.fix
    f.rp_filter_all, f.parents["eth1"].rp_filter = "1", "2"
    assert one(doctor.check_rp_filter(f)).status == OK  # max(1, 2) = 2: loose
    assert one(doctor.check_rp_filter(Facts())).status == SKIP


def test_foreign_rule_classification():
    ours = doctor.RuleInfo(10000, 20000, 211, 0x10000, 0xFF0000)
    kube = doctor.RuleInfo(100, 100, 3, 0x4000, 0x4000)
    f = Facts(state=state(), rules=[ours, kube])
    assert one(doctor.check_foreign_rules(f)).status == OK  # ours, and a mark on other bits
    f.rules.append(doctor.RuleInfo(10001, 254, 3))
    r = one(doctor.check_foreign_rules(f))
    assert r.status == ERROR and "pref 10001 lookup 254 proto 3" in r.message


def test_facts_serialise_for_json():
    import json

    f = fw_facts()
    json.dumps(doctor.as_json(doctor.run_checks(f), f))
    json.dumps(f.to_json(), default=str)


MANAGED = {"name": "multinic:latest", "id": "f" * 64, "enabled": True,
           "socket": f"/run/docker/plugins/{'f' * 64}/multinic.sock", "state_source": "/srv/multinic"}


def test_locate_service_managed_and_overrides():
    default = DEFAULT_SOCKET
    plain = Settings()
    # the service alone
    assert hostfacts.locate([], plain, False, False, True) == (default, "default", default, "/var/lib/multinic")
    # a managed plugin alone: its socket under its id, its state mount
    sock, origin, legacy, state = hostfacts.locate([MANAGED], plain, False, False, False)
    assert sock == MANAGED["socket"] and "managed plugin multinic:latest" in origin
    assert legacy == default and state == "/srv/multinic"
    # both: the service's socket is the one asked, the managed plugin still counts as an instance
    sock, _, legacy, state = hostfacts.locate([MANAGED], plain, False, False, True)
    assert sock == default and legacy == default and state == "/var/lib/multinic"
    # given ones win (flags or the environment: both end up in the settings)
    given = Settings(socket="/x.sock", state_dir="/st")
    assert hostfacts.locate([MANAGED], given, False, False, False)[::3] == ("/x.sock", "/st")
    # a disabled managed plugin is not looked at
    assert hostfacts.locate([{**MANAGED, "enabled": False}], plain, False, False, False)[0] == default


def test_state_unreadable_open_or_fine():
    r = one(doctor.check_state(Facts(state_dir="/s", state_error="Expecting value: line 1")))
    assert r.status == ERROR and "/s/state.json" in r.message and "restart the plugin" in r.fix
    assert one(doctor.check_state(Facts(state_dir="/s"))).status == OK  # not created yet
    r = one(doctor.check_state(Facts(state_dir="/s", state_dir_stat={"mode": 0o40777, "uid": 0})))
    assert r.status == WARN and "chmod 700 /s" in r.fix
    assert one(doctor.check_state(Facts(state_dir="/s", state_dir_stat={"mode": 0o40700, "uid": 0}))).status == OK


def test_managed_plugin_mount_source_missing():
    f = Facts(plugins=[{**MANAGED, "enabled": False, "missing_mounts": ["/run/xtables.lock", "/var/lib/multinic"]}])
    results = doctor.check_managed_mounts(f)
    assert [r.status for r in results] == [ERROR, ERROR]
    # the lock is iptables' own, made when first taken: the fix is the current plugin, never a hand-made lock
    assert "binds /var/lib and /run" in results[0].fix and "never create /run/xtables.lock" in results[0].fix
    assert "touch" not in results[0].fix
    assert results[1].fix.startswith("mkdir -p -m 700 /var/lib/multinic")
    assert doctor.check_managed_mounts(Facts(plugins=[MANAGED])) == []


def test_managed_plugin_state_dir_is_found_through_its_mounts() -> None:
    from plugin.ops.doctor.gather import host_path

    mounts = [{"Destination": "/host/var/lib", "Source": "/var/lib"}, {"Destination": "/host/run", "Source": "/run"}]
    assert host_path("/host/var/lib/multinic", mounts) == "/var/lib/multinic"
    assert host_path("/host/run/docker.sock", mounts) == "/run/docker.sock"
    assert host_path("/elsewhere", mounts) is None
