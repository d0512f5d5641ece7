"""The healer's wake-ups: which kernel events may mean someone removed what we put there (pure)."""


def test_kernel_event_classification():
    """Deleted routes and rules of ours, and our bridges, wake the healer; container veths and
    other protocols do not; nf_tables deletions do, additions do not."""
    import socket
    import struct

    from plugin import kevents
    from plugin.tags import RT_PROTO

    def msg(kind: int, body: bytes) -> bytes:
        return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body

    def attr(kind: int, value: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(value), kind) + value
        return raw + b"\0" * (-len(raw) % 4)

    route = lambda proto: msg(kevents.RTM_DELROUTE, bytes([2, 24, 0, 0, 254, proto, 0, 1]) + b"\0" * 4)  # noqa: E731
    rule = lambda proto: msg(kevents.RTM_DELRULE, b"\0" * 12 + attr(kevents.FRA_PROTOCOL, bytes([proto])))  # noqa: E731
    link = lambda alias: msg(kevents.RTM_DELLINK, b"\0" * 16 + attr(kevents.IFLA_IFALIAS, alias + b"\0"))  # noqa: E731
    nft = lambda m: msg((kevents.NFNL_SUBSYS_NFTABLES << 8) | m, b"\0" * 4)  # noqa: E731
    rtnl = socket.NETLINK_ROUTE
    assert kevents.classify(route(RT_PROTO), rtnl) == {"netlink"}
    assert kevents.classify(route(4), rtnl) == set()
    assert kevents.classify(rule(RT_PROTO) + rule(3), rtnl) == {"netlink"}
    assert kevents.classify(link(b"multinic:net:" + b"a" * 64), rtnl) == {"netlink"}
    assert kevents.classify(link(b"multinic:ep:" + b"a" * 64) + link(b"x"), rtnl) == set()
    assert kevents.classify(nft(kevents.NFT_MSG_DELRULE), kevents.NETLINK_NETFILTER) == {"firewall"}
    assert kevents.classify(nft(6), kevents.NETLINK_NETFILTER) == set()  # NFT_MSG_NEWRULE
