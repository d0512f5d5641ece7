"""The two kinds of error, end to end with a real dockerd. A refusal (bad input) reaches the
user's ``docker`` command as a 4xx naming the field and the fix, is logged at info, and leaves the plugin
healthy. A failure of the host (here a state directory that became read-only) reaches ``docker`` as a
500 saying what failed, puts a traceback in the log and a mark in ``/Plugin.Health`` and ``multinic
status``, until a verb succeeds again. The failure is the kernel's: the state file is a mount point
(bound onto itself in the lab host's mount namespace, where the plugin runs), so saving it fails
(the hard link of its backup: EXDEV)."""

from __future__ import annotations

from tests.e2e.helpers import network, status, wait_for


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
