"""Thousands of seeded mutations of valid bodies against the real driver and the real kernel.

In the scratch host namespace a dual-stack network bound to eth1 exists with a joined endpoint that
publishes ports (so bridges, veths, routes, rules, iptables and ip6tables chains and DNATs are all present).
Every mutated request must be answered below 500 with JSON; every refusal must leave the kernel
(links, addresses, rules, routes of all tables, iptables) and the state file byte-identical.
At the end the valid teardown leaves the namespace as it was before the network.

``MULTINIC_FUZZ_COUNT`` (default 3000) and ``MULTINIC_FUZZ_SEED`` (default 14) choose the run.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import random
import subprocess
import time

from tests.unit.mutations import EID, NID, VALID, seeded_mutation

COUNT = int(os.environ.get("MULTINIC_FUZZ_COUNT", "3000"))
SEED = int(os.environ.get("MULTINIC_FUZZ_SEED", "14"))
DUMP = ("ip -o addr; ip -4 rule; ip -4 route show table all; iptables-save | grep -v '^#'; ip -6 rule; "
        "ip -6 route show table all | sed -E 's/ expires [0-9]+sec//'; ip6tables-save | grep -v '^#'; "
        "grep . /proc/sys/net/ipv6/conf/all/forwarding /proc/sys/net/ipv6/conf/*/accept_ra")
LINK_FIELDS = ("ifname", "mtu", "master", "ifalias", "address", "flags")


def kernel_dump() -> str:
    """Links (without counters, timers and carrier), addresses, rules, routes, iptables."""
    links = json.loads(subprocess.run(["ip", "-j", "-d", "link"], capture_output=True, check=True).stdout)
    lines = [" ".join(f"{k}={link.get(k)}" for k in LINK_FIELDS if k != "flags")
             + f" kind={(link.get('linkinfo') or {}).get('info_kind')}"
             + f" up={'UP' in (link.get('flags') or [])}" for link in links]
    dump = subprocess.run(["sh", "-c", DUMP], capture_output=True, text=True, check=True).stdout
    dump = dump.replace(" linkdown", "")  # carrier follows asynchronously, not a change we made
    return "\n".join(lines) + "\n" + dump


def valid_bodies() -> dict:
    bodies = copy.deepcopy(VALID)
    bodies["CreateNetwork"]["Options"]["com.docker.network.generic"]["parent"] = "eth1"
    return bodies


def fuzz(state_dir: str, count: int, seed: int) -> dict:
    from plugin.api.http import create_app
    from plugin.plan.driver import Driver
    from plugin.plan.state import Store
    from plugin.settings import Settings

    client = create_app(Driver(Store(state_dir), Settings())).test_client()
    state_file = os.path.join(state_dir, "state.json")
    bodies = valid_bodies()

    def post(verb: str, body) -> tuple[int, dict]:
        resp = client.post(f"/NetworkDriver.{verb}", data=json.dumps(body))
        return resp.status_code, json.loads(resp.data)

    def snapshot() -> tuple[str, bytes]:
        with open(state_file, "rb") as fh:
            return kernel_dump(), fh.read()

    def setup() -> None:
        for verb in ("CreateNetwork", "CreateEndpoint", "Join"):
            code, answer = post(verb, bodies[verb])
            assert code == 200, (verb, answer)

    pristine = kernel_dump()
    setup()
    rng = random.Random(seed)
    verbs = sorted(bodies)
    stats = {"requests": 0, "accepted": 0, "refused": 0, "statuses": {}, "kinds": set(), "changed": []}
    current = snapshot()
    started = time.monotonic()
    for i in range(count):
        if i % 100 == 99:  # re-establish the baseline a successful mutation may have removed
            setup()
            current = snapshot()
        verb = rng.choice(verbs)
        body = seeded_mutation(rng, bodies[verb])
        resp = client.post(f"/NetworkDriver.{verb}", data=json.dumps(body))
        answer = json.loads(resp.data)
        stats["requests"] += 1
        stats["statuses"][resp.status_code] = stats["statuses"].get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (verb, body, answer)
        assert isinstance(answer, dict)
        after = snapshot()
        if resp.status_code == 200 and not answer.get("Err"):
            stats["accepted"] += 1
        else:
            stats["refused"] += 1
            assert "internal error" not in answer["Err"], (verb, body, answer)
            stats["kinds"].add(answer["Err"][:60])
            if after != current:
                diff = [line for line in difflib.unified_diff(current[0].splitlines(), after[0].splitlines(), n=0)
                        if line[:1] in "+-" and line[:3] not in ("+++", "---")]
                stats["changed"].append((verb, answer["Err"], diff[:6], after[1] != current[1]))
        current = after
    stats["seconds"] = round(time.monotonic() - started, 1)
    for verb in ("Leave", "DeleteEndpoint"):
        assert post(verb, {"NetworkID": NID, "EndpointID": EID})[0] == 200
    assert post("DeleteNetwork", {"NetworkID": NID})[0] == 200
    stats["left_behind"] = kernel_dump() != pristine
    stats["kinds"] = len(stats["kinds"])
    return stats


def test_seeded_mutations_never_5xx_and_refusals_change_nothing(topo):
    stats = topo.in_host(fuzz, topo.state_dir, COUNT, SEED)
    print(f"\nfuzz seed={SEED}: {stats['requests']} requests in {stats['seconds']} s, statuses {stats['statuses']}, "
          f"{stats['accepted']} accepted, {stats['refused']} refused ({stats['kinds']} distinct refusals)")
    assert not stats["changed"], stats["changed"][:5]
    assert not stats["left_behind"]
