"""Issue 22: multinic networks for swarm services, on a real swarm of three multi-homed nodes (tests/lab/swarm.py:
one manager, two workers, each its own dockerd in its own namespaces, a cluster link; the last node's parent
is ``wan1``). One swarm per engine is shared by the module; every test removes its services.

As an operator would: a registry on the cluster LAN holds the managed plugin and the image; the plugin is
installed on every node with ``docker plugin install --alias multinic``; each node has a config-only network
naming its own parent (``eth1``, ``eth1``, ``wan1``); the swarm network is created on the manager with
``--scope swarm --config-from``. Nothing here needs the machine's Docker.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.conftest import engines, missing_prerequisite, skip_or_fail
from tests.e2e.helpers import inside_managed_plugin, wait_for
from tests.lab import C0_ADDR, C1_ADDR, C1_ADDR6, HOST6_ETH1, HOST_ETH0, HOST_ETH1, start_echo_server
from tests.lab.plugin import stop_group
from tests.lab.swarm import Node, Swarm

NAME = "multinic:latest"  # the managed plugin's driver name
FRONT, BACK, EAST = "front", "back", "east"
FRONT_SUBNET, BACK_SUBNET = "10.10.0.0/24", "10.11.0.0/24"
ECHO_PORT = 7080  # an echo server on every node's c1, answering with the address it saw
ECHO6_PORT = 7081  # the same over IPv6, for the dual-stack test
PROBE = "198.18.0.1"  # nothing answers there: only the route lookup matters


def swarm_prefix(engine: str) -> str:
    """``<2 letters of MULTINIC_LAB_PREFIX>s<engine tag>`` (``sws20``): never a prefix of a plain lab's name
    (a lab kills the processes naming its directory, ``/tmp/multinic-lab-<name>``, when it goes)."""
    return f"{os.environ.get('MULTINIC_LAB_PREFIX', 'mne')[:2]}s{engine.split('.')[0]}"


def web(text: str) -> tuple[str, ...]:
    return ("sh", "-c", f"echo {text}-$(hostname) > /tmp/index.html && exec httpd -f -p 80 -h /tmp")


@pytest.fixture(scope="module", params=engines(), ids=lambda engine: f"engine-{engine}")
def swarm(request: pytest.FixtureRequest, plugin_dir: Path) -> Iterator[Swarm]:
    """The swarm formed, the registry on its LAN holding the plugin and the image; no plugin installed."""
    engine = request.param
    reason = missing_prerequisite(engine)
    if reason:
        skip_or_fail(reason)
    driver = os.environ.get("MULTINIC_LAB_DRIVER", "multinic")
    with Swarm(swarm_prefix(engine), engine, driver) as the_swarm:
        the_swarm.start_registry(plugin_dir, tags=("1", "2"))
        for node in the_swarm.nodes:
            node.docker("network", "create", "--config-only", "-o", f"parent={node.parent}", "--subnet",
                        FRONT_SUBNET, "mncfg")
        yield the_swarm


@pytest.fixture(scope="module")
def cluster(swarm: Swarm) -> Iterator[Swarm]:
    """The managed plugin on every node (docs/SWARM.md's command), the swarm network ``front`` from each node's
    ``mncfg``, an echo server on every c1; ``swarm.baseline``: each node's routing and firewall dump then,
    with no multinic network made on it."""
    ref = f"{swarm.registry.addr}/multinic:1"
    swarm.install_plugin(ref)
    swarm.manager.docker("network", "create", "-d", NAME, "--scope", "swarm", "--config-from", "mncfg",
                         "--attachable", FRONT)
    for node in swarm.nodes:
        node.serve_peer_echo(node.c1_ns, ECHO_PORT)
    swarm.baseline = {node.name: node.dump_host_state() for node in swarm.nodes}
    yield swarm


def answers(node: Node, port: int) -> str | None:
    """What a client behind the node's parent router (c1, reachable only through the parent) gets from the
    parent's address: the reply left by the parent, else it is lost at r0."""
    return node.http_get(node.c1_ns, f"http://{HOST_ETH1}:{port}/", timeout=3)


def egress(node: Node, container: str) -> str:
    """The address c1's echo server saw for a connection from the container: the parent's address when
    the container's traffic leaves by the parent (c1 is reachable only that way)."""
    return node.docker("exec", container, "sh", "-c", f"nc {C1_ADDR} {ECHO_PORT} </dev/null").stdout.strip()


def hostname(node: Node, container: str) -> str:
    return node.docker("inspect", "-f", "{{.Config.Hostname}}", container).stdout.strip()


def assert_serves(node: Node, container: str, port: int, text: str) -> None:
    """The seed case on one node: the task answers on the node's parent, and leaves by it with its address."""
    got = wait_for(lambda: answers(node, port), timeout=30)
    assert got == f"{text}-{hostname(node, container)}\n", f"{node.name}: port {port} on the parent answered {got!r}"
    assert egress(node, container) == HOST_ETH1, node.name


def assert_clean(swarm: Swarm, node: Node, timeout: float = 60) -> None:
    """No multinic kernel object left on ``node``: its dump is byte-identical to the baseline."""
    base = swarm.baseline[node.name]
    if not wait_for(lambda: node.dump_host_state() == base, timeout=timeout, interval=1):
        diff = difflib.unified_diff(base.splitlines(), node.dump_host_state().splitlines(), "baseline", "now",
                                    lineterm="")
        raise AssertionError(f"{node.name} is not back to its baseline:\n" + "\n".join(diff))


def doctor(node: Node) -> dict[str, dict]:
    """``multinic doctor --json`` on the node's host (it finds the managed plugin by itself)."""
    proc = node.multinic("doctor", "--json", own_state=False, timeout=120)
    report = json.loads(proc.stdout)
    return {c["check"]: c for c in report["checks"]}


# -- the engine's own refusal ------------------------------------------------------------------------------
def test_legacy_plugin_is_refused_by_the_swarm_manager_and_doctor_says_so(swarm: Swarm) -> None:
    """Swarm refuses a legacy (host service) plugin for a swarm-scoped network; local networks still work;
    ``multinic doctor`` on the swarm node says which mode serves a swarm."""
    m = swarm.manager
    m.start_plugin()
    try:
        refused = m.docker("network", "create", "-d", m.driver, "--scope", "swarm", "--config-from", "mncfg",
                           "legacynet", check=False)
        assert refused.returncode != 0
        assert f"legacy plugin {m.driver} of type NetworkDriver is not supported in swarm mode" in refused.stderr
        m.docker("network", "create", "-d", m.driver, "--opt", "parent=eth1", "--subnet", "10.12.0.0/24", "localnet")
        m.docker("network", "rm", "localnet")
        proc = m.multinic("doctor", "--json", "--socket", m.plugin_socket, timeout=120)
        checks = {c["check"]: c for c in json.loads(proc.stdout)["checks"]}
        assert checks["swarm"]["status"] == "warn", checks["swarm"]
        assert "swarm manager" in checks["swarm"]["message"] and "legacy" in checks["swarm"]["message"]
        assert "docker plugin install" in checks["swarm"]["fix"]
    finally:
        m.stop_plugin()


# -- services ---------------------------------------------------------------------------------------------
def test_service_with_host_ports_and_dnsrr_serves_by_each_nodes_parent(cluster: Swarm) -> None:
    """Three replicas, ``--publish mode=host``, ``--endpoint-mode dnsrr``: one task per node (the host port
    allows no more), each answering a client behind its own node's parent router, by that parent, and
    leaving by it with its address; ``multinic status`` and ``doctor`` on each node see a swarm network."""
    swarm = cluster
    swarm.create_service("web", "--network", FRONT, "--publish", "mode=host,target=80,published=8080",
                         "--endpoint-mode", "dnsrr", "--replicas", "3", cmd=web("web"))
    try:
        placed = swarm.wait_tasks("web", 3)
        assert all(len(ids) == 1 for ids in placed.values()), placed
        for node in swarm.nodes:
            assert_serves(node, placed[node.name][0], 8080, "web")
            status = inside_managed_plugin(node, "status")
            assert f"{FRONT_SUBNET[:-3]}" in status and node.parent in status and "swarm" in status, status
            checks = doctor(node)
            assert checks["ghosts"]["status"] == "ok", checks["ghosts"]
            assert checks["swarm"]["status"] == "ok" and NAME in checks["swarm"]["message"], checks["swarm"]
    finally:
        swarm.remove_services("web")
    for node in swarm.nodes:
        assert_clean(swarm, node)


def test_scale_drain_and_dockerd_restart(cluster: Swarm) -> None:
    """Tasks move and come back with their ports: scale down and up, drain a node, restart a worker's
    dockerd. A node whose last task left holds no multinic kernel object (dump byte-identical)."""
    swarm = cluster
    swarm.create_service("web", "--network", FRONT, "--publish", "mode=host,target=80,published=8080",
                         "--endpoint-mode", "dnsrr", "--replicas", "3", cmd=web("web"))
    try:
        swarm.wait_tasks("web", 3)
        swarm.manager.docker("service", "scale", "-d", "web=1")
        placed = swarm.wait_tasks("web", 1)
        for node in swarm.nodes:
            if placed[node.name]:
                assert_serves(node, placed[node.name][0], 8080, "web")
            else:
                assert_clean(swarm, node)

        swarm.manager.docker("service", "scale", "-d", "web=3")
        placed = swarm.wait_tasks("web", 3)
        for node in swarm.nodes:
            assert_serves(node, placed[node.name][0], 8080, "web")

        # Drain a node: its task moves to the node left free.
        swarm.manager.docker("service", "scale", "-d", "web=2")
        placed = swarm.wait_tasks("web", 2)
        drained = next(n for n in swarm.workers if placed[n.name])
        swarm.manager.docker("node", "update", "--availability", "drain", drained.node_id)
        try:
            placed = swarm.wait_tasks("web", 2, off=drained.name)
            assert_clean(swarm, drained)
            for node in swarm.nodes:
                if placed[node.name]:
                    assert_serves(node, placed[node.name][0], 8080, "web")
        finally:
            swarm.manager.docker("node", "update", "--availability", "active", drained.node_id)

        # Restart a worker's dockerd (its containers stop with it): the task moves, then comes back. Docker
        # renames its own veths and rewrites its rules at a restart: that node is checked for multinic's
        # objects, then its baseline is taken again.
        restarted = next(n for n in swarm.workers if placed[n.name])
        restarted.stop_dockerd(remove_containers=False)
        restarted.start_dockerd()
        assert wait_for(lambda: swarm.ready_nodes() == 3, timeout=120, interval=2)
        placed = swarm.wait_tasks("web", 2)
        for node in swarm.nodes:
            if placed[node.name]:
                assert_serves(node, placed[node.name][0], 8080, "web")
            elif node is restarted:
                assert wait_for(lambda: not restarted.multinic_objects(), timeout=60), restarted.multinic_objects()
            else:
                assert_clean(swarm, node)
        swarm.manager.docker("service", "scale", "-d", "web=3")
        placed = swarm.wait_tasks("web", 3)
        assert_serves(restarted, placed[restarted.name][0], 8080, "web")
    finally:
        swarm.remove_services("web")
    assert wait_for(lambda: not restarted.multinic_objects(), timeout=60), restarted.multinic_objects()
    swarm.baseline[restarted.name] = restarted.dump_host_state()
    for node in swarm.nodes:
        assert_clean(swarm, node)


STACK = """
version: "3.13"  # the first compose schema of docker stack deploy with driver_opts on a service's network
services:
  app:
    image: {image}
    command: ["sh", "-c", "echo app-$$(hostname) > /tmp/index.html && exec httpd -f -p 80 -h /tmp"]
    stop_grace_period: 1s
    deploy:
      mode: global
      endpoint_mode: dnsrr
    ports:
      - {{target: 80, published: 8090, mode: host}}
    networks:
      back: {{}}
      front:
        driver_opts:
          gw_priority: "10"
networks:
  front: {{external: true}}
  back: {{external: true}}
"""


def test_stack_deploy_with_external_network_and_gw_priority(cluster: Swarm, tmp_path: Path) -> None:
    """``docker stack deploy`` of a compose file using the swarm networks as ``external``: ``back`` (on eth0)
    sorts first and Docker gives it the default route; the service's ``driver_opts: {gw_priority: 10}`` on
    ``front`` moves it to ``front``, as on one host: the tasks' egress leaves by the parent."""
    swarm = cluster
    m = swarm.manager
    for node in swarm.nodes:
        node.docker("network", "create", "--config-only", "-o", "parent=eth0", "--subnet", BACK_SUBNET, "mnback")
    m.docker("network", "create", "-d", NAME, "--scope", "swarm", "--config-from", "mnback", "--attachable", BACK)
    (tmp_path / "stack.yml").write_text(textwrap.dedent(STACK.format(image=swarm.image)))
    try:
        m.docker("stack", "deploy", "-c", str(tmp_path / "stack.yml"), "st", timeout=180)
        placed = swarm.wait_tasks("st_app", 3)
        for node in swarm.nodes:
            ctr = placed[node.name][0]
            assert wait_for(lambda n=node, c=ctr: "via 10.10.0.1" in n.docker("exec", c, "ip", "route", "get",
                                                                          PROBE).stdout, timeout=30)
            assert_serves(node, ctr, 8090, "app")
    finally:
        m.docker("stack", "rm", "st", check=False)
        swarm.remove_services("st_app")
        m.docker("network", "rm", BACK, check=False)
        for node in swarm.nodes:
            node.docker("network", "rm", "mnback", check=False)
    for node in swarm.nodes:
        assert_clean(swarm, node)


def test_multinic_beside_an_overlay_network(cluster: Swarm) -> None:
    """A global service on ``front`` and an overlay network: east-west traffic between the tasks of three
    nodes goes over the overlay (each node's multinic network is an island with the same subnet), the
    default route stays on ``front`` (the overlay gives none) and the tasks leave by the parent."""
    swarm = cluster
    swarm.manager.docker("network", "create", "-d", "overlay", "--attachable", EAST)
    swarm.create_service("api", "--mode", "global", "--endpoint-mode", "dnsrr", "--network", FRONT, "--network",
                         EAST, "--publish", "mode=host,target=80,published=8081", cmd=web("api"))
    try:
        placed = swarm.wait_tasks("api", 3)
        names = {hostname(node, placed[node.name][0]) for node in swarm.nodes}
        for node in swarm.nodes:
            ctr = placed[node.name][0]
            assert_serves(node, ctr, 8081, "api")
            assert "via 10.10.0.1" in node.docker("exec", ctr, "ip", "route", "get", PROBE).stdout
            # Swarm's DNS learns the other nodes' tasks by gossip: all three within a few seconds
            overlay = wait_for(lambda n=node, c=ctr: _overlay_peers(n, c, "api"), timeout=30)
            assert len(overlay) == 3 and not any(ip.startswith("10.10.") for ip in overlay), overlay
            # ... and the VXLAN forwarding entries by the same gossip, which on 20.10 can lag the DNS record
            seen = {wait_for(lambda n=node, c=ctr, ip=ip: n.docker(
                        "exec", c, "sh", "-c", f"timeout 5 wget -qO- http://{ip}/", check=False).stdout.strip(),
                             timeout=30)
                    for ip in overlay}
            assert seen == {f"api-{n}" for n in names}, (node.name, seen)
    finally:
        swarm.remove_services("api")
        swarm.manager.docker("network", "rm", EAST, check=False)
    for node in swarm.nodes:
        assert_clean(swarm, node)


def _overlay_peers(node: Node, ctr: str, service: str) -> list[str]:
    """The addresses swarm's DNS gives for ``tasks.SERVICE`` in a container: all three tasks', else []."""
    peers = node.docker("exec", ctr, "sh", "-c", f"nslookup tasks.{service} 127.0.0.11", check=False).stdout
    found = sorted({line.split()[-1] for line in peers.splitlines()
                    if line.startswith("Address") and not line.split()[-1].startswith("127.")})
    return found if len(found) == 3 else []


def test_dual_stack_swarm_network(cluster: Swarm) -> None:
    """IPv6 beside IPv4 on a swarm network: each node's config-only network carries ``--ipv6`` and an IPv6
    subnet, which the node copies into the swarm network with its parent. A task on every node answers a
    client behind that node's parent on the parent's IPv6 and IPv4 addresses, by the parent, and its IPv6
    egress leaves by the parent with the parent's IPv6 address; nothing is left afterwards (forwarding and
    accept_ra put back)."""
    swarm = cluster
    m = swarm.manager
    servers = []
    try:
        for node in swarm.nodes:
            node.docker("network", "create", "--config-only", "--ipv6", "-o", f"parent={node.parent}", "--subnet",
                        "10.15.0.0/24", "--subnet", "fd00:15::/64", "mncfg6")
            servers.append(node.serve_peer_echo(node.c1_ns, ECHO6_PORT, "::"))
        m.docker("network", "create", "-d", NAME, "--scope", "swarm", "--config-from", "mncfg6", "--attachable",
                 "front6")
        swarm.create_service("web6", "--mode", "global", "--endpoint-mode", "dnsrr", "--network", "front6",
                             "--publish", "mode=host,target=80,published=8083", cmd=web("web6"))
        placed = swarm.wait_tasks("web6", 3)
        for node in swarm.nodes:
            ctr = placed[node.name][0]
            want = f"web6-{hostname(node, ctr)}\n"
            got = wait_for(lambda n=node: n.http_get(n.c1_ns, f"http://[{HOST6_ETH1}]:8083/", timeout=3), timeout=30)
            assert got == want, (node.name, got, node.docker("inspect", ctr).stdout[-3000:])
            assert node.http_get(node.c1_ns, f"http://{HOST_ETH1}:8083/", timeout=3) == want, node.name
            out = node.docker("exec", ctr, "sh", "-c", f"nc -w 3 {C1_ADDR6} {ECHO6_PORT} </dev/null", check=False)
            assert out.stdout.strip() == HOST6_ETH1, (node.name, out.stdout, out.stderr)
    finally:
        swarm.remove_services("web6")
        m.docker("network", "rm", "front6", check=False)
        for node in swarm.nodes:
            node.docker("network", "rm", "mncfg6", check=False)
        for server in servers:
            stop_group(server, 5)
    for node in swarm.nodes:
        assert_clean(swarm, node)


def test_plugin_upgrade_across_the_cluster_node_by_node(cluster: Swarm) -> None:
    """docs/SWARM.md's upgrade: per node, drain, disable, upgrade, enable, active again. The service keeps
    serving from the other nodes meanwhile, and every node runs the new release at the end."""
    swarm = cluster
    m = swarm.manager
    new = f"{swarm.registry.addr}/multinic:2"
    swarm.create_service("web", "--network", FRONT, "--publish", "mode=host,target=80,published=8080",
                         "--endpoint-mode", "dnsrr", "--replicas", "2", cmd=web("web"))
    try:
        swarm.wait_tasks("web", 2)
        for node in swarm.nodes:
            m.docker("node", "update", "--availability", "drain", node.node_id)
            try:
                placed = swarm.wait_tasks("web", 2, off=node.name)
                assert_clean(swarm, node)
                node.docker("plugin", "disable", "-f", NAME)
                node.docker("plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", NAME, new,
                            timeout=300)
                node.docker("plugin", "enable", NAME, timeout=120)
                for other in swarm.nodes:
                    if placed[other.name]:
                        assert_serves(other, placed[other.name][0], 8080, "web")
            finally:
                m.docker("node", "update", "--availability", "active", node.node_id)
        for node in swarm.nodes:
            described = node.docker("plugin", "inspect", "-f", "{{.Config.Description}}", NAME).stdout
            assert "[release 2]" in described, (node.name, described)
        m.docker("service", "scale", "-d", "web=3")
        placed = swarm.wait_tasks("web", 3)
        for node in swarm.nodes:
            assert_serves(node, placed[node.name][0], 8080, "web")
    finally:
        swarm.remove_services("web")
    for node in swarm.nodes:
        assert_clean(swarm, node)


# -- what would silently break -------------------------------------------------------------------------------
def test_swarm_network_without_config_from_is_refused(cluster: Swarm) -> None:
    """``--scope swarm`` without ``--config-from``: swarm drops ``-o`` and ``--subnet``; the node's
    CreateNetwork is refused naming ``--config-only`` and ``--config-from``, no bridge without a parent is
    made, and doctor on the manager names the network."""
    swarm = cluster
    m = swarm.manager
    worker = swarm.workers[0]
    m.docker("network", "create", "-d", NAME, "--scope", "swarm", "-o", "parent=eth1", "--subnet", "10.13.0.0/24",
             "--attachable", "lost")
    swarm.create_service("lost", "--network", "lost", "--endpoint-mode", "dnsrr", "--constraint",
                         f"node.labels.mn.node=={worker.name}")
    try:
        def rejected() -> str | None:
            out = m.docker("service", "ps", "--no-trunc", "--format", "{{.Error}}", "lost").stdout
            return out if "--config-from" in out else None

        err = wait_for(rejected, timeout=60, interval=1)
        assert err and "--config-only" in err and "NetworkDriver.CreateNetwork" in err, \
            m.docker("service", "ps", "--no-trunc", "lost").stdout
        assert not any(swarm.placement("lost").values())
        checks = doctor(m)
        assert checks["swarm"]["status"] == "error" and "lost" in checks["swarm"]["message"], checks["swarm"]
        assert "--config-from" in checks["swarm"]["fix"]
        assert_clean(swarm, worker, timeout=10)
    finally:
        swarm.remove_services("lost")
        m.docker("network", "rm", "lost", check=False)


def test_a_swarm_network_left_behind_is_forgotten(cluster: Swarm) -> None:
    """Dynamic networks are first-class: a swarm network whose DeleteNetwork the plugin missed (it was
    disabled when the node's last task left) is forgotten when the plugin starts again, and none of its
    kernel objects is left; doctor on every node calls nothing a ghost."""
    swarm = cluster
    worker = swarm.workers[-1]
    swarm.create_service("gone", "--network", FRONT, "--endpoint-mode", "dnsrr", "--constraint",
                         f"node.labels.mn.node=={worker.name}")
    try:
        swarm.wait_tasks("gone", 1)
        worker.docker("plugin", "disable", "-f", NAME)
        swarm.remove_services("gone")
    finally:
        worker.docker("plugin", "enable", NAME, timeout=120)
    assert_clean(swarm, worker, timeout=90)
    for node in swarm.nodes:
        checks = doctor(node)
        assert checks["ghosts"]["status"] == "ok", (node.name, checks["ghosts"])


# -- the routing mesh ------------------------------------------------------------------------------------
MESH_PORT = 8082


def mesh_rules(sbox: str, port: int) -> list[tuple[str, ...]]:
    """What dockerd adds to a node for a routing-mesh port (libnetwork's programIngress): DNAT to
    ingress_sbox behind docker_gwbridge, and FORWARD accepts. ``-A`` rules; ``-D`` removes them."""
    return [
        ("-t", "nat", "-A", "DOCKER-INGRESS", "-p", "tcp", "--dport", str(port), "-j", "DNAT", "--to-destination",
         f"{sbox}:{port}"),
        ("-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER-INGRESS"),
        ("-t", "filter", "-A", "DOCKER-INGRESS", "-p", "tcp", "--dport", str(port), "-j", "ACCEPT"),
        ("-t", "filter", "-A", "DOCKER-INGRESS", "-p", "tcp", "-m", "state", "--state", "RELATED,ESTABLISHED",
         "--sport", str(port), "-j", "ACCEPT"),
        ("-t", "filter", "-I", "FORWARD", "-j", "DOCKER-INGRESS"),
    ]


@contextlib.contextmanager
def routing_mesh(node: Node, port: int) -> Iterator[None]:
    """Swarm's routing mesh on ``node`` for ``port``, host side rule for rule, ending in ingress_sbox (the
    mesh's namespace, which dockerd made when the node joined) where an echo server stands in for IPVS and
    the task: this kernel has no IPVS (CONFIG_IP_VS unset), so dockerd logs that "native loadbalancing will
    not work" and programs no ingress port at all (measured on 20.10 and 28.5)."""
    gwbridge = json.loads(node.docker("network", "inspect", "docker_gwbridge").stdout)[0]
    sbox = next(c["IPv4Address"].split("/")[0] for c in gwbridge["Containers"].values()
                if c["Name"] == "gateway_ingress-sbox")
    rules = mesh_rules(sbox, port)
    for table in ("nat", "filter"):
        node.host("iptables", "-t", table, "-N", "DOCKER-INGRESS")
    for rule in rules:
        node.host("iptables", *rule)
    enter = ["nsenter", f"--mount=/proc/{node.mount_anchor.pid}/ns/mnt",  # type: ignore[union-attr]
             "nsenter", f"--net={node.exec_root}/netns/ingress_sbox"]
    server = start_echo_server(enter, port, sbox)
    try:
        yield
    finally:
        stop_group(server, 5)
        for rule in reversed(rules):
            node.host("iptables", *[("-D" if word in ("-A", "-I") else word) for word in rule])
        for table in ("nat", "filter"):
            node.host("iptables", "-t", table, "-X", "DOCKER-INGRESS")


def test_routing_mesh_replies_leave_by_the_parent_with_ingress_replies(cluster: Swarm) -> None:
    """A routing-mesh port reached through the parent: without multinic's option the reply follows main's
    default route out of eth0 and the client behind the parent never gets it (the seed's problem, for
    the mesh); a network on that parent with ``--opt ingress_replies=true`` sends it back by the parent.
    Clients through eth0 are answered by eth0 either way."""
    swarm = cluster
    node = swarm.workers[0]
    by_r0 = node.add_counter(node.r0_ns, "-i", "h0", "-p", "tcp", "--sport", str(MESH_PORT))
    by_r1 = node.add_counter(node.r1_ns, "-i", "h1", "-p", "tcp", "--sport", str(MESH_PORT))
    with routing_mesh(node, MESH_PORT):
        for option, answered in ((), False), (("-o", "ingress_replies=true"), True):
            node.docker("network", "create", "-d", NAME, "-o", "parent=eth1", *option, "--subnet", "10.14.0.0/24",
                        "meshnet")
            try:
                r0, r1 = by_r0(), by_r1()
                got = node.tcp_read(node.c1_ns, HOST_ETH1, MESH_PORT, timeout=3)
                print(f"mesh via the parent, {' '.join(option) or 'no option'}: answered {got is not None}, "
                      f"replies (SYN-ACK and after) at r0 (eth0) {by_r0() - r0}, at r1 (parent) {by_r1() - r1}")
                assert (got == f"{C1_ADDR}\n") is answered, (option, got)
                if answered:
                    assert by_r1() > r1 and by_r0() == r0
                else:
                    assert by_r0() > r0 and by_r1() == r1  # the SYN-ACKs went to eth0's router
                assert node.tcp_read(node.c0_ns, HOST_ETH0, MESH_PORT, timeout=3) == f"{C0_ADDR}\n"
            finally:
                node.docker("network", "rm", "meshnet")
    assert_clean(swarm, node)
