"""Pure checks of the host's IPv6 for multinic: forwarding, ``accept_ra`` on the parents and on the NICs
whose default route comes from router advertisements, ``disable_ipv6`` on a parent, the ip6tables
flavour."""

from __future__ import annotations

from ...kernel.tags import CHAIN_PREFIX
from .facts import ERROR, FLAVOURS, OK, SKIP, WARN, Facts, Result


def _ipv6_parents(f: Facts) -> list[str]:
    return sorted({n.parent for n in f.state.networks.values() if n.subnet6 and n.parent and not n.internal})


def check_ipv6_forwarding(f: Facts) -> list[Result]:
    if not f.state.has_ipv6():
        return [Result("ipv6_forwarding", OK, f"net.ipv6.conf.all.forwarding={f.forwarding6}; no IPv6 multinic "
                       "network (multinic turns it on with the first one, and puts it back with the last)")]
    if f.forwarding6 == "1":
        return [Result("ipv6_forwarding", OK, "net.ipv6.conf.all.forwarding=1")]
    return [Result("ipv6_forwarding", ERROR, f"net.ipv6.conf.all.forwarding={f.forwarding6} while IPv6 multinic "
                   "networks exist: their containers' IPv6 is not routed", "multinic reconcile")]


def check_accept_ra(f: Facts) -> list[Result]:
    """With forwarding on, the kernel ignores router advertisements on a NIC with ``accept_ra=1`` and drops
    the default route they gave: the NICs that depend on them need 2."""
    out = []
    parents = _ipv6_parents(f)
    forwarding = f.forwarding6 == "1"
    for name in sorted(set(f.ra_default) | set(parents)):
        value = f.accept_ra.get(name)
        fix = f"sysctl -w net.ipv6.conf.{name}.accept_ra=2"
        role = "a parent of IPv6 networks" if name in parents else "its IPv6 default route comes from router " \
            "advertisements"
        if value == 2 or value is None:
            out.append(Result("accept_ra", OK, f"{name}: accept_ra={value} ({role})"))
        elif value == 1 and forwarding:
            out.append(Result("accept_ra", ERROR, f"{name}: {role}, but accept_ra=1 with IPv6 forwarding on: the "
                              "kernel ignores its router advertisements and drops the default route they give",
                              fix))
        elif value == 1:
            out.append(Result("accept_ra", OK, f"{name}: accept_ra=1 ({role}); multinic sets 2 before it turns IPv6 "
                              "forwarding on, and puts 1 back with its last IPv6 network"))
        elif name in parents:
            out.append(Result("accept_ra", WARN, f"{name}: accept_ra={value}: router advertisements on the parent are "
                              "ignored, so its IPv6 next hop is not followed when the router changes (give "
                              "parent_gateway6, or accept them)", fix))
    if forwarding and not f.default_routes6:
        lost = sorted(n for n, v in f.accept_ra.items() if v == 1 and n != "lo")
        if lost:
            out.append(Result("accept_ra", WARN, "IPv6 forwarding is on, the host has no IPv6 default route, and "
                              f"{', '.join(lost)} ignore(s) router advertisements (accept_ra=1): if the host's IPv6 "
                              "default route came from them, it is gone",
                              "; ".join(f"sysctl -w net.ipv6.conf.{n}.accept_ra=2" for n in lost)))
    return out or [Result("accept_ra", SKIP, "no NIC learns its IPv6 default route from router advertisements")]


def check_parents_ipv6(f: Facts) -> list[Result]:
    out = []
    for name in _ipv6_parents(f):
        p = f.parents.get(name)
        if p is None or not p.exists:
            continue
        if p.disable_ipv6 == "1":
            out.append(Result("parent_ipv6", ERROR, f"{name}: IPv6 is disabled on it (disable_ipv6=1) but IPv6 "
                              "multinic networks use it", f"sysctl -w net.ipv6.conf.{name}.disable_ipv6=0"))
        elif not p.addresses6:
            out.append(Result("parent_ipv6", ERROR, f"{name}: no global, stable IPv6 address: IPv6 ports are "
                              "published nowhere and egress has no source", f"configure a global address on {name}"))
        else:
            out.append(Result("parent_ipv6", OK, f"{name}: IPv6 {', '.join(p.addresses6)}"))
    return out or [Result("parent_ipv6", SKIP, "no IPv6 multinic network")]


def check_ip6tables_flavour(f: Facts) -> list[Result]:
    """multinic's IPv6 chains go in the flavour of Docker's (its ip6tables chains, else its iptables ones:
    20.10 leaves ip6tables alone)."""
    name = "ip6tables_flavour"
    if not f.state.has_ipv6():
        return [Result(name, SKIP, "no IPv6 multinic network")]
    docker = [fl for fl in FLAVOURS if fl in f.ip6tables and f.ip6tables[fl].has_docker] or \
        [fl for fl in FLAVOURS if fl in f.iptables and f.iptables[fl].has_docker]
    ours = [fl for fl in FLAVOURS if fl in f.ip6tables and f.ip6tables[fl].has_ours]
    if not ours:
        return [Result(name, ERROR, "IPv6 multinic networks exist but ip6tables holds no chain of multinic's",
                       "multinic reconcile")]
    wrong = [fl for fl in ours if docker and fl not in docker]
    if wrong:
        return [Result(name, ERROR, f"Docker uses {docker[0]}, multinic's IPv6 chains are in ip6tables-{wrong[0]}",
                       f"set MULTINIC_FIREWALL={docker[0]}, restart the plugin, then ip6tables-{wrong[0]}-save | grep "
                       f"-v {CHAIN_PREFIX} | ip6tables-{wrong[0]}-restore")]
    return [Result(name, OK, f"multinic's IPv6 chains are in ip6tables-{ours[0]}")]
