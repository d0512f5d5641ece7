"""What an operator with production containers on the host relies on, with a real dockerd:

- a DOCKER-USER rule of the user's holds for multinic's published ports as it does for Docker's own,
  whether it was put there after multinic installed its jumps or before (as after every reboot);
- losing the whole state directory takes nothing down: the plugin rebuilds the state from dockerd and
  the kernel, the containers keep answering, a new one joins, ``network rm`` still cleans up;
- a parent's next hop that multinic had to guess is shown as such, and ``doctor`` checks that it answers.
"""

from __future__ import annotations

import json
import shutil

from tests.e2e.helpers import containers, network, run, status, wait_for, web_cmd
from tests.lab import C1_ADDR, HOST_ETH1, R1_HOST_SIDE

DROP_C1 = ("-s", f"{C1_ADDR}/32", "-j", "DROP")


def answers(lab, port: int, text: str, timeout: float = 20) -> bool:
    return wait_for(lambda: lab.http_get(lab.c1_ns, f"http://{HOST_ETH1}:{port}/", timeout=2) == f"{text}\n",
                    timeout=timeout)


def blocked(lab, port: int) -> bool:
    return lab.http_get(lab.c1_ns, f"http://{HOST_ETH1}:{port}/", timeout=2) is None


def doctor(lab) -> dict:
    out = lab.multinic("doctor", "--json", "--socket", lab.plugin_socket, timeout=120)
    return {c["check"]: c for c in json.loads(out.stdout)["checks"]}


def test_a_docker_user_drop_added_after_multinic_holds_for_its_ports(mn):
    lab = mn
    with network(lab, "du1", "--opt", "parent=eth1", "--subnet", "10.81.0.0/24"), containers(lab) as names:
        run(lab, names, "du1-web", "--network", "du1", "-p", "4181:80", cmd=web_cmd("du1"))
        assert answers(lab, 4181, "du1")
        lab.host("iptables", "-I", "DOCKER-USER", *DROP_C1)  # as Docker documents it
        try:
            assert blocked(lab, 4181)
            forward = doctor(lab)["forward"]
            assert forward["status"] == "ok" and "after your 1 rule(s)" in forward["message"], forward
        finally:
            lab.host("iptables", "-D", "DOCKER-USER", *DROP_C1)
        assert answers(lab, 4181, "du1")


def test_a_docker_user_drop_that_was_there_first_holds_too(mn):
    """After a reboot the saved rules come back before the plugin starts: the user's rule is in
    DOCKER-USER before multinic puts its jump there (with its first network)."""
    lab = mn
    assert "MULTINIC-FORWARD" not in lab.host("iptables", "-S", "DOCKER-USER").stdout  # no multinic network yet
    lab.host("iptables", "-I", "DOCKER-USER", *DROP_C1)
    try:
        with network(lab, "du2", "--opt", "parent=eth1", "--subnet", "10.82.0.0/24"), containers(lab) as names:
            run(lab, names, "du2-web", "--network", "du2", "-p", "4182:80", cmd=web_cmd("du2"))
            rules = lab.host("iptables", "-S", "DOCKER-USER").stdout.splitlines()
            ours = next(i for i, r in enumerate(rules) if "MULTINIC-FORWARD" in r)
            assert ours > next(i for i, r in enumerate(rules) if C1_ADDR in r), rules
            assert "MULTINIC-FORWARD" not in lab.host("iptables", "-S", "FORWARD").stdout
            assert blocked(lab, 4182)
            lab.host("iptables", "-D", "DOCKER-USER", *DROP_C1)
            assert answers(lab, 4182, "du2")
    finally:
        lab.host("iptables", "-D", "DOCKER-USER", *DROP_C1, check=False)


def test_losing_the_whole_state_directory_takes_nothing_down(mn):
    lab = mn
    before_network = lab.dump_host_state()
    with network(lab, "keep", "--opt", "parent=eth1", "--subnet", "10.83.0.0/24"), containers(lab) as names:
        run(lab, names, "keep-web", "--network", "keep", "-p", "4183:80", "-p", "4190-4199:81",
            cmd=web_cmd("kept"))
        assert answers(lab, 4183, "kept")
        with_container = lab.dump_host_state()
        lab.stop_plugin()
        shutil.rmtree(lab.state_dir)  # /var/lib wiped, or a managed plugin re-installed with another mount
        assert answers(lab, 4183, "kept", timeout=3)  # the kernel still has everything
        lab.start_plugin()
        assert answers(lab, 4183, "kept", timeout=3)
        report = status(lab)
        assert "rebuilt from dockerd" in (report["health"]["state"].get("rebuilt") or ""), report["health"]
        assert report["health"]["healthy"], report["health"]["problems"]
        ports = {p["host"] for p in report["ports"]}
        assert f"{HOST_ETH1}:4183" in ports and any(p.startswith(f"{HOST_ETH1}:419") for p in ports), ports
        assert lab.dump_host_state() == with_container  # nothing removed, nothing added
        run(lab, names, "keep-new", "--network", "keep", "-p", "4184:80", cmd=web_cmd("new"))
        assert answers(lab, 4184, "new")
        lab.docker("rm", "-f", "keep-web", "keep-new")
    assert wait_for(lambda: lab.dump_host_state() == before_network, timeout=10), lab.dump_host_state()


def test_a_damaged_state_file_is_rebuilt_not_replaced_by_its_older_backup(mn):
    """The state file is damaged (a disk error, a hand edit). Its backup is one save older and lacks the
    network the last verb made: restoring it would tear that network down. The plugin sets the file aside
    and rebuilds the state from dockerd, so the newest network still works."""
    lab = mn
    before_network = lab.dump_host_state()
    state_file = lab.state_dir / "state.json"
    try:
        with network(lab, "older", "--opt", "parent=eth1", "--subnet", "10.85.0.0/24"), \
                network(lab, "newest", "--opt", "parent=eth1", "--subnet", "10.86.0.0/24"), \
                containers(lab) as names:
            assert "10.86.0.0/24" not in (lab.state_dir / "state.json.bak").read_text()  # one save older
            lab.stop_plugin()
            state_file.write_text(state_file.read_text()[:60])  # truncated
            lab.start_plugin()
            def rebuilt():
                report = status(lab)
                return report if (report["health"]["state"].get("rebuilt") or "").startswith("rebuilt") else None

            report = wait_for(rebuilt, timeout=20)
            assert report["health"]["healthy"], report["health"]["problems"]
            assert {n["subnet"] for n in report["networks"]} >= {"10.85.0.0/24", "10.86.0.0/24"}
            run(lab, names, "newest-web", "--network", "newest", "-p", "4186:80", cmd=web_cmd("newest"))
            assert answers(lab, 4186, "newest")
            assert list(lab.state_dir.glob("state.json.corrupt-*"))
    finally:
        for kept in lab.state_dir.glob("state.json.corrupt-*"):
            kept.unlink()
    assert wait_for(lambda: lab.dump_host_state() == before_network, timeout=10), lab.dump_host_state()


def test_a_guessed_next_hop_is_shown_and_checked(mn):
    """eth1 has no default route anywhere (the seed's case): its next hop is guessed as the first host of
    its subnet. ``status`` says so; ``doctor`` checks it answers, and names the fix when it does not."""
    lab = mn
    with network(lab, "guess", "--opt", "parent=eth1", "--subnet", "10.84.0.0/24"):
        net = next(n for n in status(lab)["networks"] if n["subnet"] == "10.84.0.0/24")
        assert net["parent_gateway"] == R1_HOST_SIDE and net["gateway_source"].startswith("guessed")
        assert "guessed" in lab.plugin_log_tail(400)
        parent = doctor(lab)["parent"]
        assert parent["status"] == "ok" and "guessed" in parent["message"] and "answers" in parent["message"]
        # the router is not at the first host
        lab.run(lab.r1, "ip", "addr", "del", f"{R1_HOST_SIDE}/24", "dev", "h1")
        lab.run(lab.r1, "ip", "addr", "add", "192.168.101.254/24", "dev", "h1")
        lab.host("ip", "neigh", "flush", "dev", "eth1")
        try:
            parent = doctor(lab)["parent"]
            assert parent["status"] == "error" and "does not answer" in parent["message"], parent
            assert "-o parent_gateway=" in parent["fix"], parent
        finally:
            lab.run(lab.r1, "ip", "addr", "del", "192.168.101.254/24", "dev", "h1")
            lab.run(lab.r1, "ip", "addr", "add", f"{R1_HOST_SIDE}/24", "dev", "h1")
