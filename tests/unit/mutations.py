"""Valid remote-driver bodies (as dockerd sends them) and hypothesis strategies that mutate them.

Shared by the unit property tests and the kernel-level fuzz (tests/integration/test_hostile_input.py),
which replays seeded mutations without hypothesis' shrinking (:func:`seeded_mutation`).
"""

from __future__ import annotations

import copy
import random
from typing import Any

from hypothesis import strategies as st

NID = "a7" * 32
EID = "e7" * 32
PORTMAP = [
    {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
    {"Proto": 17, "IP": "", "Port": 90, "HostIP": "", "HostPort": 0, "HostPortEnd": 0},
]
VALID: dict[str, dict[str, Any]] = {
    "GwAllocCheck": {"Options": {"com.docker.network.generic": {}}},
    "CreateNetwork": {
        "NetworkID": NID,
        "Options": {"com.docker.network.enable_ipv6": True, "com.docker.network.internal": False,
                    "com.docker.network.generic": {"mtu": "1400", "gw_priority": "5"}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.213.0.0/24", "Gateway": "10.213.0.1/24",
                      "AuxAddresses": {"r1": "10.213.0.250/24"}}],
        "IPv6Data": [{"AddressSpace": "LocalDefault", "Pool": "fd00:213::/64", "Gateway": "fd00:213::1/64"}],
    },
    "DeleteNetwork": {"NetworkID": NID},
    "CreateEndpoint": {
        "NetworkID": NID, "EndpointID": EID,
        "Interface": {"Address": "10.213.0.2/24", "AddressIPv6": "fd00:213::2/64", "MacAddress": ""},
        "Options": {"com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
                    "com.docker.network.portmap": PORTMAP, "gw_priority": "3"},
    },
    "EndpointOperInfo": {"NetworkID": NID, "EndpointID": EID},
    "Join": {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/var/run/docker/netns/0123456789ab",
             "Options": {"com.docker.network.portmap": PORTMAP,
                         "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}]}},
    "ProgramExternalConnectivity": {"NetworkID": NID, "EndpointID": EID,
                                    "Options": {"com.docker.network.portmap": PORTMAP}},
    "RevokeExternalConnectivity": {"NetworkID": NID, "EndpointID": EID},
    "Leave": {"NetworkID": NID, "EndpointID": EID},
    "DeleteEndpoint": {"NetworkID": NID, "EndpointID": EID},
}
ALL_PATHS = ["/Plugin.Activate", "/Plugin.Health"] + [
    f"/NetworkDriver.{v}" for v in sorted(set(VALID) | {"GetCapabilities", "AllocateNetwork", "FreeNetwork",
                                                        "DiscoverNew", "DiscoverDelete"})
]

# Values a careless or hostile client sends: wrong types, extremes, path tricks, ids of other lengths.
NASTY = [
    None, True, False, 0, -1, 1, 65535, 65536, 2**31, 2**63, -(2**63), 1.5, float("inf"), "", " ", "0", "-1",
    "true", "80", "eth0", "lo", "mn-" + "a" * 12, "../../etc/passwd", "/", "/var/run/docker/netns/../../x",
    "a\x00b", "\n", "é" * 20, "x" * 300, "A7" * 32, "a7" * 31, "a7" * 33, "g" * 64, "0.0.0.0", "127.0.0.1",
    "255.255.255.255", "10.213.0.0/24", "10.213.0.1/33", "0.0.0.0/0", "::1", "fd00::1/64", "01:00:5e:00:00:01",
    "::", "::/0", "fe80::/64", "fe80::1", "fd00:213::/56", "fd00:213::1/129", "2001:db8:101::/64", "2001:db8:101::2",
    "ff02::1", "[fd00::1]", "fd00:213::2/64", "::ffff:10.213.0.2",
    "00:00:00:00:00:00", "02:42:ac:11:00:02", [], {}, [1], {"a": 1}, [{}], [None],
]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40),
                    st.sampled_from(NASTY))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location in a body: dict keys and list indexes, depth first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += _paths(child, prefix + (i,))
    return found


def _apply(body: Any, path: tuple, op: str, new: Any) -> Any:
    body = copy.deepcopy(body)
    if not path:
        return new if op == "replace" else body
    parent = body
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "replace":
        parent[last] = new
    elif op == "add" and isinstance(parent[last], dict):
        parent[last]["Unexpected" + str(len(parent[last]))] = new
    elif op == "add" and isinstance(parent[last], list):
        parent[last].append(new)
    else:
        parent[last] = new
    return body


@st.composite
def mutated(draw: Any, valid: dict[str, Any]) -> Any:
    """One to three mutations (delete, replace with any JSON, add a key/element) of a valid body."""
    body: Any = valid
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(body)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        if op == "delete" and not path:
            op = "replace"
        body = _apply(body, path, op, draw(json_values))
        if not isinstance(body, (dict, list)):
            break
    return body


def seeded_mutation(rng: random.Random, valid: dict[str, Any]) -> Any:
    """:func:`mutated` without hypothesis: reproducible from a seed, cheap for thousands of runs."""
    body: Any = valid
    for _ in range(rng.randint(1, 3)):
        if not isinstance(body, (dict, list)):
            break
        path = rng.choice(_paths(body))
        op = rng.choice(["delete", "replace", "replace", "add"])
        if op == "delete" and not path:
            op = "replace"
        new = rng.choice(NASTY) if rng.random() < 0.7 else rng.choice([
            rng.randint(-10, 70000), "".join(rng.choice("0123456789abcdefg./:-x") for _ in range(rng.randint(0, 70))),
            [rng.choice(NASTY)], {"k": rng.choice(NASTY)},
        ])
        body = _apply(body, path, op, copy.deepcopy(new))
    return body
