"""Which kernel events mean someone may have removed what we put there, and their parsing (pure)."""

import os
import struct
import time

from plugin.kernel import events
from plugin.kernel import netlink as nl
from plugin.kernel.tags import RT_PROTO

IFLA_IFNAME, IFLA_MTU, IFLA_IFALIAS, FRA_PROTOCOL = 3, 4, 20, 21


def one(protocol: int, kind: int, body: bytes) -> set[str]:
    event = events.parse(protocol, kind, body)
    return events.drift([event] if event else [])


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def test_kernel_event_classification():
    """Deleted routes and rules of ours, and our bridges, are drift; container veths and other protocols
    are not; nf_tables deletions and new chains are, other additions and published ports are not."""
    route = lambda proto: bytes([2, 24, 0, 0, 254, proto, 0, 1]) + b"\0" * 4  # noqa: E731
    rule = lambda proto: b"\0" * 12 + attr(FRA_PROTOCOL, bytes([proto]))  # noqa: E731
    link = lambda alias: b"\0" * 16 + attr(IFLA_IFALIAS, alias + b"\0")  # noqa: E731
    rtnl, nfnl = nl.NETLINK_ROUTE, nl.NETLINK_NETFILTER
    assert one(rtnl, nl.RTM_DELROUTE, route(RT_PROTO)) == {"netlink"}
    assert one(rtnl, nl.RTM_DELROUTE, route(4)) == set()
    # a veth's routes (not default, not ours) are left at the header; a default route is looked at
    assert events.parse(rtnl, nl.RTM_NEWROUTE, route(RT_PROTO)) is None
    assert events.parse(rtnl, nl.RTM_DELROUTE, route(4)) is None
    default = bytes([2, 0, 0, 0, 254, 4, 0, 1]) + b"\0" * 4
    assert events.parse(rtnl, nl.RTM_NEWROUTE, default).dst_len == 0
    assert one(rtnl, nl.RTM_DELRULE, rule(RT_PROTO)) == {"netlink"} and one(rtnl, nl.RTM_DELRULE, rule(3)) == set()
    assert one(rtnl, nl.RTM_DELLINK, link(b"multinic:net:" + b"a" * 64)) == {"netlink"}
    assert one(rtnl, nl.RTM_DELLINK, link(b"multinic:ep:" + b"a" * 64)) == set()
    assert one(nfnl, (events.NFNL_SUBSYS_NFTABLES << 8) | events.NFT_MSG_DELRULE, b"\0" * 4) == {"firewall"}
    assert one(nfnl, (events.NFNL_SUBSYS_NFTABLES << 8) | 6, b"\0" * 4) == set()  # NFT_MSG_NEWRULE
    assert one(nfnl, (events.NFNL_SUBSYS_NFTABLES << 8) | 12, b"\0" * 4) == set()  # NFT_MSG_NEWSETELEM: a port
    assert one(nfnl, (events.NFNL_SUBSYS_NFTABLES << 8) | 14, b"\0" * 4) == set()  # NFT_MSG_DELSETELEM
    # a new chain: Docker's iptables may have come after us (its FORWARD DROP to open)
    assert one(nfnl, (events.NFNL_SUBSYS_NFTABLES << 8) | events.NFT_MSG_NEWCHAIN, b"\0" * 4) == {"firewall"}


def test_messages_of_one_datagram():
    body = struct.pack("=BxHiII", 0, 0, 3, 0x10041, 0) + attr(IFLA_IFNAME, b"eth1\0") + attr(
        IFLA_MTU, struct.pack("=I", 9000))
    datagram = struct.pack("=IHHII", 16 + len(body), nl.RTM_NEWLINK, 0, 0, 0) + body
    (kind, _flags, _seq, payload), = list(nl.messages(datagram))
    event = events.parse(nl.NETLINK_ROUTE, kind, payload)
    assert (event.name, event.index, event.mtu, event.link_key) == ("eth1", 3, 9000, ("eth1", 9000, 0x10041))


def test_own_transactions_are_left_out():
    """nf_tables changes are followed by their transaction's generation, naming the process that
    committed it: this process's own are not drift, another's are; one whose generation is still to come
    waits for it."""
    fw, link = events.Event(events.FIREWALL), events.Event(nl.RTM_DELLINK, index=4)
    gen = lambda pid: events.Event(events.GENERATION, index=pid)  # noqa: E731
    pending: list = []
    mine = {42}.__contains__
    assert events.others([fw, fw, gen(42), link], mine, pending) == [link] and pending == []
    assert events.others([fw, gen(7), fw, gen(42)], mine, pending) == [fw] and pending == []
    assert events.others([gen(42), fw], mine, pending) == [] and pending == [fw]  # its generation is still to come
    assert events.others([gen(7)], mine, pending) == [fw] and pending == []
    body = struct.pack("=BBH", 0, 0, 0) + attr(1, struct.pack(">I", 9)) + attr(events.NFTA_GEN_PROC_PID,
                                                                                 struct.pack(">I", 4242))
    event = events.parse(nl.NETLINK_NETFILTER, (events.NFNL_SUBSYS_NFTABLES << 8) | events.NFT_MSG_NEWGEN, body)
    assert event == events.Event(events.GENERATION, index=4242)


def test_a_transaction_of_this_process_or_a_sibling_worker_is_ours_and_a_child_is_not():
    """The kernel names the committing thread: any thread of this process (the healer's repairs) and any
    other worker forked by the same parent is ours; a child process (an operator's ``nft``) is not."""
    import signal
    import subprocess
    import threading

    done, tid = threading.Event(), []
    thread = threading.Thread(target=lambda: (tid.append(threading.get_native_id()), done.wait(5)))
    thread.start()
    try:
        while not tid:
            time.sleep(0.01)
        assert events.committed_by_us(os.getpid()) and events.committed_by_us(tid[0])
    finally:
        done.set()
        thread.join()
    child = subprocess.Popen(["sleep", "5"])
    try:
        assert not events.committed_by_us(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not events.committed_by_us(1)
    sibling = os.fork()
    if sibling == 0:  # a second worker: forked by the same parent, the same command line
        signal.pause()
        os._exit(0)
    try:
        worker = os.fork()
        if worker == 0:
            os._exit(0 if events.committed_by_us(sibling) else 1)
        assert os.waitpid(worker, 0)[1] == 0
    finally:
        os.kill(sibling, signal.SIGKILL)
        os.waitpid(sibling, 0)
