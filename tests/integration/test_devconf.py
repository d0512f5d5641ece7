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
