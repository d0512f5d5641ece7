"""The two kinds of error, end to end with a real dockerd. A refusal (bad input) reaches the
user's ``docker`` command as a 4xx naming the field and the fix, is logged at info, and leaves the plugin
healthy. A failure of the host reaches ``docker`` as a 500 saying what failed, puts a traceback in the
log and a mark in ``/Plugin.Health`` and ``multinic status``, until that verb succeeds again: not when
another verb does, such as the DeleteEndpoint dockerd sends to roll back a failed Join. The failures are
the kernel's: a state file that is a mount point (bound onto itself in the lab host's mount namespace,
where the plugin runs), so saving it fails (the hard link of its backup: EXDEV); our nftables table taken
by another program (``flags owner``: the kernel refuses anyone else's change to it while that program
runs), so publishing a port fails."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Iterator

from tests.e2e.helpers import IMAGE, containers, network, status, wait_for


def test_a_refusal_names_the_field_and_leaves_the_plugin_healthy(mn):
    lab = mn
    refused = lab.docker("network", "create", "-d", lab.driver, "--opt", "parent=nosuch0", "--subnet",
                         "10.85.0.0/24", "refused", check=False)
    assert refused.returncode != 0
    assert "parent=nosuch0" in refused.stderr and "no such network interface" in refused.stderr, refused.stderr
    assert "NetworkDriver.CreateNetwork" in refused.stderr  # dockerd's prefix for a non-200 answer
    log = lab.plugin_log_tail(50)
    assert "INFO" in next(ln for ln in log.splitlines() if "refused" in ln and "nosuch0" in ln)
    assert status(lab)["health"]["healthy"]


def test_a_failure_is_a_500_with_a_trace_and_a_mark_in_health(mn):
    lab = mn
    with network(lab, "first", "--subnet", "10.86.0.0/24"):
        pass  # the state file exists
    state = str(lab.state_dir / "state.json")
    lab.host("mount", "--bind", state, state)
    try:
        failed = lab.docker("network", "create", "-d", lab.driver, "--opt", "parent=eth1", "--subnet",
                            "10.86.0.0/24", "failing", check=False)
        assert failed.returncode != 0
        assert "multinic failed in NetworkDriver.CreateNetwork" in failed.stderr, failed.stderr
        assert "state.json" in failed.stderr and "[Errno " in failed.stderr, failed.stderr
        log = lab.plugin_log_tail(200)
        assert "NetworkDriver.CreateNetwork failed" in log and "Traceback (most recent call last)" in log
        report = status(lab)
        assert not report["health"]["healthy"]
        assert any("CreateNetwork failed" in p and "state.json" in p for p in report["health"]["problems"])
        text = lab.multinic("status").stdout
        assert "UNHEALTHY" in text and "CreateNetwork failed" in text
    finally:
        lab.host("umount", state)
    with network(lab, "works", "--opt", "parent=eth1", "--subnet", "10.86.0.0/24"):
        assert wait_for(lambda: status(lab)["health"]["healthy"], timeout=5), status(lab)["health"]


@contextlib.contextmanager
def table_owned_by_another_program(lab) -> Iterator[None]:
    """Our table deleted and made again, empty, by an ``nft`` that stays: owned by it until it exits, when
    the kernel deletes the table."""
    owner = subprocess.Popen([*lab.nsenter(lab.host_ns), "nft", "-i"], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    assert owner.stdin is not None
    try:
        owner.stdin.write("delete table ip multinic; add table ip multinic { flags owner; }\n")
        owner.stdin.flush()
        assert wait_for(lambda: "flags owner" in lab.host("nft", "list", "table", "ip", "multinic", check=False).stdout,
                        timeout=10), "the table was not taken"
        yield
    finally:
        owner.stdin.close()
        owner.wait(timeout=10)


def test_a_failed_join_stays_in_health_after_dockers_rollback_until_a_join_succeeds(mn):
    lab = mn
    assert status(lab)["firewall"] == "nftables"  # the lab's default: multinic's own nftables table
    with network(lab, "joins", "--opt", "parent=eth1", "--subnet", "10.87.0.0/24"), containers(lab) as names:
        names += ["refused-join", "joined"]
        with table_owned_by_another_program(lab):
            failed = lab.docker("run", "-d", "--name", "refused-join", "--network", "joins", "-p", "4087:80", IMAGE,
                                "sleep", "3600", check=False)
        # Read once the table is free again: nft 1.0.6 lists an owned table as broken JSON.
        assert failed.returncode != 0
        assert "multinic failed in NetworkDriver.Join" in failed.stderr, failed.stderr
        assert "Operation not permitted" in failed.stderr, failed.stderr
        # dockerd rolled the start back: its DeleteEndpoint succeeded (the endpoint is gone from the state)
        assert wait_for(lambda: status(lab)["endpoints"] == [], timeout=10), status(lab)["endpoints"]
        log = lab.plugin_log_tail(300)
        assert "NetworkDriver.Join failed" in log and "Traceback (most recent call last)" in log
        report = status(lab)
        assert any(p.startswith("NetworkDriver.Join failed") and "Operation not permitted" in p
                   for p in report["health"]["problems"]), report["health"]["problems"]
        text = lab.multinic("status").stdout
        assert "UNHEALTHY" in text and "NetworkDriver.Join failed" in text, text
        lab.docker("run", "-d", "--name", "joined", "--network", "joins", "-p", "4087:80", IMAGE, "sleep", "3600")
        assert not any("Join failed" in p for p in status(lab)["health"]["problems"])
        assert wait_for(lambda: status(lab)["health"]["healthy"], timeout=30), status(lab)["health"]
