"""``multinic doctor`` against a real kernel: each test breaks the scratch host (the ``topo`` fixture's
namespace) the way a real host breaks, checks that doctor names the problem and its fix, and where the fix
is a command, runs it and sees the check pass. Docker-dependent checks live in tests/e2e/test_doctor.py;
networkd/NetworkManager parsing in tests/unit/test_doctor.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from plugin.ops import doctor
from plugin.ops.doctor import gather as hostfacts
from tests.integration.conftest import BACKEND
from tests.integration.test_datapath import create_network
from tests.nsutil import sh

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gather_and_check(state_dir: str, sock: str, parents: tuple[str, ...], root: str, env: dict) -> list:
    from plugin.settings import load

    settings = load({"state_dir": state_dir, "socket": sock}, {**os.environ, **env})
    facts = hostfacts.gather(settings, state_given=True, socket_given=True, parents=parents, docker=False,
                             paths=hostfacts.HostPaths(root=root))
    return doctor.run_checks(facts)


def _backend_env(env: dict | None) -> dict:
    """The backend the test's verbs run with, for doctor and the CLI too (unless the test says otherwise)."""
    return {"MULTINIC_FIREWALL": BACKEND[0], **(env or {})} if BACKEND[0] else dict(env or {})


def run_doctor(t, tmp_path, parents=(), sock=None, env=None) -> dict[str, list[doctor.Result]]:
    """Doctor's gatherer and checks inside the scratch host namespace; results by check name."""
    results = t.in_host(_gather_and_check, t.state_dir, sock or str(tmp_path / "no.sock"), tuple(parents),
                        str(tmp_path / "root"), _backend_env(env))
    out: dict[str, list[doctor.Result]] = {}
    for r in results:
        out.setdefault(r.check, []).append(r)
    return out


def only(results: dict, check: str) -> doctor.Result:
    assert len(results[check]) == 1, results[check]
    return results[check][0]


def cli(t, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=REPO, DOCKER_HOST=f"unix://{t.state_dir}/no-docker.sock",
                    **_backend_env(env))
    return subprocess.run(["nsenter", f"--net=/var/run/netns/{t.host}", sys.executable, "-m", "plugin",
                           "--state-dir", t.state_dir, *args], capture_output=True, text=True, env=full_env,
                          timeout=120, cwd=REPO)


def fix_command(result: doctor.Result) -> str:
    return result.fix.split(" && echo")[0].split(";")[0].split("   (")[0]


def test_ip_forward_off_is_named_and_its_fix_works(topo, tmp_path):
    assert only(run_doctor(topo, tmp_path), "ip_forward").status == doctor.OK
    sh(topo.host, "sysctl -qw net.ipv4.ip_forward=0")
    r = only(run_doctor(topo, tmp_path), "ip_forward")
    assert r.status == doctor.ERROR and "ip_forward=0" in r.message
    assert fix_command(r) == "sysctl -w net.ipv4.ip_forward=1"
    sh(topo.host, fix_command(r))
    assert only(run_doctor(topo, tmp_path), "ip_forward").status == doctor.OK


def test_strict_rp_filter_on_a_parent_is_named_and_its_fix_works(topo, tmp_path):
    sh(topo.host, "sysctl -qw net.ipv4.conf.eth1.rp_filter=1")
    r = only(run_doctor(topo, tmp_path, parents=["eth1"]), "rp_filter")
    assert r.status == doctor.ERROR and "eth1" in r.message and "strict" in r.message
    sh(topo.host, fix_command(r))
    assert only(run_doctor(topo, tmp_path, parents=["eth1"]), "rp_filter").status == doctor.OK
    # the kernel uses max(all, dev): all=1 makes a device's 0 strict (but not its 2)
    sh(topo.host, "sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.eth1.rp_filter=0")
    r = only(run_doctor(topo, tmp_path, parents=["eth1"]), "rp_filter")
    assert r.status == doctor.ERROR and "conf.all.rp_filter=1" in r.message
    sh(topo.host, fix_command(r))
    assert only(run_doctor(topo, tmp_path, parents=["eth1"]), "rp_filter").status == doctor.OK


def test_parent_without_address_down_or_gateway(topo, tmp_path):
    res = run_doctor(topo, tmp_path, parents=["eth0", "eth1", "nosuch0"])
    by_parent = {r.message.split(":")[0].split(" ")[0]: r for r in res["parent"]}
    assert by_parent["eth0"].status == doctor.OK and "gateway 192.168.100.1" in by_parent["eth0"].message
    # eth1 has an address but no default route through it, and no network gives one
    assert by_parent["eth1"].status == doctor.WARN and "no gateway" in by_parent["eth1"].message
    assert "parent_gateway=" in by_parent["eth1"].fix
    assert by_parent["nosuch0"].status == doctor.ERROR and "no such interface" in by_parent["nosuch0"].message
    sh(topo.host, "ip addr flush dev eth1")
    r = only(run_doctor(topo, tmp_path, parents=["eth1"]), "parent")
    assert r.status == doctor.ERROR and "no IPv4 address" in r.message and "ip addr add" in r.fix
    sh(topo.host, "ip addr add 192.168.101.2/24 dev eth1; ip link set eth1 down")
    r = only(run_doctor(topo, tmp_path, parents=["eth1"]), "parent")
    assert r.status == doctor.ERROR and "down" in r.message
    sh(topo.host, r.fix)
    assert only(run_doctor(topo, tmp_path, parents=["eth1"]), "parent").status == doctor.WARN  # back to "no gateway"


def test_parent_gateway_of_a_network_no_longer_on_link(topo, tmp_path):
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    assert only(run_doctor(topo, tmp_path), "parent").status == doctor.OK
    # the NIC moved to another subnet: the network's gateway 192.168.101.1 is off-link now
    sh(topo.host, "ip addr del 192.168.101.2/24 dev eth1; ip addr add 192.168.102.2/24 dev eth1")
    r = only(run_doctor(topo, tmp_path), "parent")
    assert r.status == doctor.ERROR and "192.168.101.1 is not on" in r.message


def test_foreign_rules_routes_and_marks_are_named(topo, tmp_path):
    assert only(run_doctor(topo, tmp_path), "foreign_rules").status == doctor.OK
    sh(topo.host, "ip rule add pref 10000 fwmark 0x10000/0xff0000 lookup 100; ip rule add pref 500 lookup 20000; "
                  "ip route add 10.99.0.0/24 dev eth1 table 20000; "
                  "iptables -t mangle -A PREROUTING -i eth1 -j MARK --set-mark 0x7")
    res = {r.status + ":" + r.message.split(":")[0]: r for r in run_doctor(topo, tmp_path)["foreign_rules"]}
    at_pref = next(r for k, r in res.items() if k.startswith("error") and "priorities" in k)
    assert "pref 10000 fwmark 0x10000/0xff0000 lookup 100" in at_pref.message
    assert "ip rule del pref 10000 fwmark 0x10000/0xff0000 lookup 100" in at_pref.fix
    messages = " | ".join(r.message for r in res.values())
    assert "pref 500 lookup 20000" in messages  # another tool looks up a table from multinic's range
    assert "mark bits 0xff0000" in messages  # the fwmark rule, and the MARK --set-mark (mask 0xffffffff)
    assert "--set-xmark 0x7/0xffffffff" in messages
    assert "table 20000: 1" in messages
    # the printed fix for the rule at our priority really removes it
    sh(topo.host, at_pref.fix.split("   (")[0])
    assert not any("priorities" in r.message for r in run_doctor(topo, tmp_path)["foreign_rules"])


def test_forward_reordered_is_named_and_its_fix_works(topo, tmp_path, iptables_nft):
    """A FORWARD without DOCKER-USER (Docker's chains of another setup): multinic's jump must come first."""
    sh(topo.host, "iptables -D FORWARD -j DOCKER-USER && iptables -F DOCKER-USER && iptables -X DOCKER-USER")
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    sh(topo.host, "iptables -N DOCKER-FORWARD")  # what dockerd's chains look like
    assert only(run_doctor(topo, tmp_path), "forward").status == doctor.OK
    # another tool (or a Docker restart from an older setup) puts Docker's jump above ours
    sh(topo.host, "iptables -I FORWARD 1 -j DOCKER-FORWARD")
    r = only(run_doctor(topo, tmp_path), "forward")
    assert r.status == doctor.ERROR and "-j DOCKER-FORWARD" in r.message and "rule 2" in r.message
    sh(topo.host, r.fix.split("   (")[0].replace("iptables-nft ", "iptables "))
    assert only(run_doctor(topo, tmp_path), "forward").status == doctor.OK
    # a foreign ACCEPT above ours is a warning
    sh(topo.host, "iptables -I FORWARD 1 -s 203.0.113.0/24 -j ACCEPT")
    assert only(run_doctor(topo, tmp_path), "forward").status == doctor.WARN
    # our jump gone: error, and `multinic reconcile` (the printed fix) puts it back
    sh(topo.host, "iptables -D FORWARD -m comment --comment multinic -j MULTINIC-FORWARD")
    r = only(run_doctor(topo, tmp_path), "forward")
    assert r.status == doctor.ERROR and "no jump to MULTINIC-FORWARD" in r.message
    assert r.fix.startswith("multinic reconcile")
    assert cli(topo, "reconcile").returncode == 0
    assert only(run_doctor(topo, tmp_path), "forward").status != doctor.ERROR


def test_firewall_flavour_other_than_dockers_is_named(topo, tmp_path, iptables_nft):
    if not any(os.access(os.path.join(d, "iptables-legacy"), os.X_OK) for d in os.environ["PATH"].split(":")):
        import pytest

        pytest.skip("iptables-legacy not installed")
    assert "DOCKER-USER" in sh(topo.host, "iptables-nft -S")  # Docker's chains (the topo fixture's)
    # multinic forced to the legacy tables while Docker lives in nf_tables
    env = {"MULTINIC_FIREWALL": "legacy-restore"}
    proc = cli(topo, "reconcile", env=env)
    assert proc.returncode == 0, proc.stderr
    assert create_network(topo, {"parent": "eth1"})["status"] == 200  # nft (the default here)
    sh(topo.host, "iptables-legacy -N MULTINIC-FORWARD")  # stale chain of a legacy-forced run
    r = only(run_doctor(topo, tmp_path, env=env), "iptables_flavour")
    assert r.status == doctor.ERROR and "Docker uses iptables-nft" in r.message and "legacy" in r.message
    assert "MULTINIC_FIREWALL=nft" in r.fix
    sh(topo.host, "iptables-legacy -X MULTINIC-FORWARD")
    r = only(run_doctor(topo, tmp_path, env=env), "iptables_flavour")
    assert r.status == doctor.ERROR and "MULTINIC_FIREWALL=legacy-restore" in r.message
    assert only(run_doctor(topo, tmp_path, env={"MULTINIC_FIREWALL": ""}), "iptables_flavour").status == doctor.OK


def test_br_netfilter_off_and_missing_same_bridge_accept(topo, tmp_path, iptables_nft):
    import pytest

    if not os.path.isdir("/proc/sys/net/bridge"):
        pytest.skip("br_netfilter not loaded on this machine (doctor's warning for that is unit-tested)")
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    sh(topo.host, "sysctl -qw net.bridge.bridge-nf-call-iptables=1")
    assert only(run_doctor(topo, tmp_path), "br_netfilter").status == doctor.OK
    sh(topo.host, "sysctl -qw net.bridge.bridge-nf-call-iptables=0")
    r = only(run_doctor(topo, tmp_path), "br_netfilter")
    assert r.status == doctor.WARN and "bridge-nf-call-iptables=0" in r.message
    sh(topo.host, r.fix)
    bridge = "mn-" + "a1" * 6
    sh(topo.host, f"iptables -D MULTINIC-ACCEPT -i {bridge} -o {bridge} -j ACCEPT")
    r = only(run_doctor(topo, tmp_path), "br_netfilter")
    assert r.status == doctor.ERROR and bridge in r.message


def test_socket_permissions(topo, tmp_path):
    path = str(tmp_path / "open.sock")
    os.chmod(tmp_path, 0o755)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(path)
        srv.listen(1)
        os.chmod(path, 0o666)
        r = only(run_doctor(topo, tmp_path, sock=path), "socket")
        assert r.status == doctor.ERROR and "0666" in r.message and f"chmod 600 {path}" in r.fix
        os.chmod(tmp_path, 0o700)  # a closed directory (a managed plugin's) is enough
        assert only(run_doctor(topo, tmp_path, sock=path), "socket").status == doctor.OK
        os.chmod(tmp_path, 0o755)
        sh(topo.host, r.fix.split("; upgrade")[0])
        assert only(run_doctor(topo, tmp_path, sock=path), "socket").status == doctor.OK
    finally:
        srv.close()


def _serve(t, sock: str, state_dir: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO, MULTINIC_STATE_DIR=state_dir,
               DOCKER_HOST=f"unix://{state_dir}/no-docker.sock", MULTINIC_WORKERS="2")
    proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{t.host}", sys.executable, "-m", "plugin",
                             "serve", "--socket", sock, *extra], env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(f"{state_dir}.log", "ab"))  # noqa: SIM115
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, open(f"{state_dir}.log").read()
        time.sleep(0.1)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_real_plugin_socket_health_and_two_instances(topo, tmp_path):
    """A real `multinic serve`: socket 0600 root, /Plugin.Health answers; a second serve in the same
    namespace (the service plus a managed plugin, say) is an error naming both pids."""
    a_sock, b_sock = str(tmp_path / "a" / "multinic.sock"), str(tmp_path / "b" / "multinic.sock")
    a = _serve(topo, a_sock, str(tmp_path / "a-state"))
    b = None
    try:
        res = run_doctor(topo, tmp_path, sock=a_sock)
        assert only(res, "socket").status == doctor.OK and "mode 0700, root" in only(res, "socket").message
        assert only(res, "health").status == doctor.OK
        assert only(res, "instances").status == doctor.OK
        b = _serve(topo, b_sock, str(tmp_path / "b-state"))
        r = only(run_doctor(topo, tmp_path, sock=a_sock), "instances")
        assert r.status == doctor.ERROR and f"pid {a.pid}" in r.message and f"pid {b.pid}" in r.message
        assert "keep one" in r.fix
        # the real CLI: --json, exit code 2 (docker unreachable here, and two instances)
        proc = cli(topo, "doctor", "--json", "--socket", a_sock)
        assert proc.returncode == 2, proc.stderr
        data = json.loads(proc.stdout)
        assert data["exit_code"] == 2
        checks = {c["check"]: c for c in data["checks"]}
        assert checks["instances"]["status"] == "error" and checks["docker"]["status"] == "error"
        assert checks["health"]["status"] == "ok"
        text = cli(topo, "doctor", "--socket", a_sock)
        assert text.returncode == 2 and "[FAIL] instances" in text.stdout and "fix: keep one" in text.stdout
    finally:
        if b is not None:
            _stop(b)
        _stop(a)
    r = only(run_doctor(topo, tmp_path, sock=a_sock), "socket")
    assert r.status == doctor.ERROR and "not serving" in r.message


def test_unreadable_state_is_named(topo, tmp_path):
    os.makedirs(topo.state_dir, mode=0o700)
    with open(f"{topo.state_dir}/state.json", "w") as fh:
        fh.write("{half a file")
    r = only(run_doctor(topo, tmp_path), "state")
    assert r.status == doctor.ERROR and "state.json cannot be read" in r.message
    os.unlink(f"{topo.state_dir}/state.json")
    assert only(run_doctor(topo, tmp_path), "state").status == doctor.OK


def test_native_backend_is_shown_and_a_foreign_forward_drop_is_named_with_a_fix_that_works(topo, tmp_path):
    """multinic on nftables beside Docker's iptables-nft: both backends shown, Docker's FORWARD DROP opened
    from DOCKER-USER (no error); another table's forward hook with policy drop is named, and its fix works."""
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    res = run_doctor(topo, tmp_path)
    fw = only(res, "firewall")
    assert fw.status == doctor.OK and "Docker: iptables (iptables-nft)" in fw.message
    assert "multinic: nftables" in fw.message and "table" in fw.message and "opened from iptables-nft" in fw.message
    assert only(res, "forward").status == doctor.OK and only(res, "forward_drop").status == doctor.OK
    sh(topo.host, "nft add table inet hostfw; nft add chain inet hostfw host-forward "
                  "'{ type filter hook forward priority 10; policy drop; }'")
    r = only(run_doctor(topo, tmp_path), "forward_drop")
    assert r.status == doctor.ERROR and "inet hostfw chain host-forward" in r.message and "policy drop" in r.message
    assert r.fix.startswith('nft insert rule inet hostfw host-forward iifname "mn-*" accept')
    sh(topo.host, r.fix.split("   (")[0])
    assert only(run_doctor(topo, tmp_path), "forward_drop").status == doctor.OK
    sh(topo.host, "nft delete table inet hostfw")


def test_engine29_nftables_mode_is_shown_and_ip_forward_off_is_an_error(topo, tmp_path):
    """Docker's nftables backend (its docker-bridges tables, no iptables chains): doctor shows it beside
    multinic's own table; ip_forward off is an error that says Docker does not turn it on."""
    from tests.lab import engine29

    sh(topo.host, "iptables -P FORWARD ACCEPT && iptables -D FORWARD -j DOCKER-USER && iptables -F DOCKER-USER && "
                  "iptables -X DOCKER-USER && iptables -X DOCKER && nft -f - <<'EOF'\n"
                  + engine29.ruleset("172.17.0.0/16", 4) + engine29.ruleset(None, 6) + "EOF")
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    res = run_doctor(topo, tmp_path)
    fw = only(res, "firewall")
    assert fw.status == doctor.OK, fw
    assert "Docker: nftables (tables ip docker-bridges, ip6 docker-bridges)" in fw.message
    assert "multinic: nftables" in fw.message and "ip multinic" in fw.message
    for check in ("forward", "forward_drop", "iptables_flavour"):
        assert only(res, check).status == doctor.OK, only(res, check)
    sh(topo.host, "sysctl -qw net.ipv4.ip_forward=0")
    r = only(run_doctor(topo, tmp_path), "ip_forward")
    assert r.status == doctor.ERROR and "Docker's nftables backend does not turn it on" in r.message
    sh(topo.host, "sysctl -qw net.ipv4.ip_forward=1")
