"""IPv4 per-interface settings over netlink (plugin/kernel/devconf.py): what a managed plugin, whose /proc/sys is
read-only, uses for rp_filter. Checked against the kernel's own view in /proc/sys, in a scratch namespace."""

from __future__ import annotations

import os
import subprocess

from plugin.kernel import devconf
from tests.nsutil import in_netns, scratch_netns


def _exercise() -> list[str]:
    subprocess.run(["ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth8"], check=True)
    proc = "/proc/sys/net/ipv4/conf/eth9/rp_filter"
    seen = []
    for value in ("1", "2", "0"):
        devconf.write_sysctl("net/ipv4/conf/eth9/rp_filter", value)
        seen.append(open(proc).read().strip())
        assert devconf.read_sysctl("net/ipv4/conf/eth9/rp_filter") == value
    # "all" and "default" are no links: they still go through /proc/sys
    all_rp = open("/proc/sys/net/ipv4/conf/all/rp_filter").read().strip()
    assert devconf.read_sysctl("net/ipv4/conf/all/rp_filter") == all_rp
    assert devconf.read_sysctl("net/ipv4/conf/nosuch0/rp_filter") is None
    devconf.write_sysctl("net/ipv4/conf/nosuch0/rp_filter", "2")  # a missing interface is left alone
    return seen


def test_rp_filter_written_and_read_over_netlink() -> None:
    with scratch_netns(f"mnd{os.getpid() % 1000}") as ns:
        assert in_netns(ns, _exercise) == ["1", "2", "0"]


def _ipv6_behind_a_read_only_proc_sys() -> tuple[str, str]:
    """As in a managed plugin: this process's own mount namespace, /proc/sys bind-mounted read-only (what
    the runtime does). IPv6 settings have no netlink setter: they go through a procfs of the plugin's own."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.unshare(0x00020000) == 0  # CLONE_NEWNS: a mount namespace of this child's only
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "--bind", "/proc/sys", "/proc/sys"], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", "/proc/sys"], check=True)
    subprocess.run(["ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth8"], check=True)
    try:
        open("/proc/sys/net/ipv6/conf/eth9/accept_ra", "w").write("2")
        raise AssertionError("/proc/sys should be read-only here")
    except OSError as exc:
        assert exc.errno == 30  # EROFS
    devconf.write_sysctl("net/ipv6/conf/eth9/accept_ra", "2")
    devconf.write_sysctl("net/ipv6/conf/all/forwarding", "1")
    return (devconf.read_sysctl("net/ipv6/conf/eth9/accept_ra") or "",
            devconf.read_sysctl("net/ipv6/conf/all/forwarding") or "")


def test_ipv6_settings_written_where_proc_sys_is_read_only() -> None:
    import tempfile
    from pathlib import Path

    mountpoint = Path(tempfile.gettempdir(), "multinic-procfs")
    existed = mountpoint.exists()
    try:
        with scratch_netns(f"mne{os.getpid() % 1000}") as ns:
            assert in_netns(ns, _ipv6_behind_a_read_only_proc_sys) == ("2", "1")
            # the write went to that network namespace (seen from outside the child's mount namespace)
            seen = subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", "cat",
                                   "/proc/sys/net/ipv6/conf/all/forwarding"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            assert seen == "1"
    finally:
        if not existed and mountpoint.is_dir():
            mountpoint.rmdir()  # mounted only in the child's mount namespace, gone with it
