"""Small helpers shared by the end-to-end tests (everything goes through the real docker CLI)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from typing import Iterator

from tests.lab import wait_for  # noqa: F401 - the tests import it from here

IMAGE = "mn-busybox:latest"


def web_cmd(text: str, port: int = 80) -> list[str]:
    """A busybox httpd serving ``text`` (PID 1 is sh, so `docker rm -f` is quick)."""
    return ["sh", "-c", f"mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p {port} -h /www"]


@contextlib.contextmanager
def network(lab, name: str, *args: str, driver: str | None = None) -> Iterator[str]:
    """``docker network create -d <plugin>`` that is removed afterwards, on failure too."""
    lab.docker("network", "create", "-d", driver or lab.driver, *args, name)
    try:
        yield name
    finally:
        lab.docker("network", "rm", name, check=False)


@contextlib.contextmanager
def containers(lab) -> Iterator[list[str]]:
    """Collects container names to `docker rm -f` at the end."""
    names: list[str] = []
    try:
        yield names
    finally:
        if names:
            lab.docker("rm", "-f", *names, check=False)


def run(lab, names: list[str], name: str, *args: str, cmd: list[str] | None = None) -> str:
    names.append(name)
    return lab.docker("run", "-d", "--name", name, *args, IMAGE, *(cmd or ["sleep", "3600"])).stdout.strip()


def fetch(lab, client: str, url: str, timeout: int = 3) -> str:
    """``wget -qO- URL`` in a container; what it printed ("" when it could not connect)."""
    return lab.docker("exec", client, "sh", "-c", f"timeout {timeout} wget -qO- {url}", check=False).stdout


@contextlib.contextmanager
def across_two_networks(lab, tag: str, subnets: tuple[str, str], ports: tuple[int, int]) -> Iterator[list[str]]:
    """Two multinic networks on eth1 (``<tag>_a``, ``<tag>_b``) with a web container each (``<tag>-a``,
    ``<tag>-b``) publishing one port: each reaches the other's published port through eth1's address, never
    its address directly (isolation). Yields [address a, address b, and the container list to add to]; all
    removed afterwards."""
    with network(lab, f"{tag}_a", "--opt", "parent=eth1", "--subnet", subnets[0]), \
            network(lab, f"{tag}_b", "--opt", "parent=eth1", "--subnet", subnets[1]), containers(lab) as names:
        names += [f"{tag}-a", f"{tag}-b"]
        yield [*_across(lab, tag, ports), names]


def _across(lab, tag: str, ports: tuple[int, int]) -> tuple[str, str]:
    names = (f"{tag}-a", f"{tag}-b")
    for name, net, port in zip(names, (f"{tag}_a", f"{tag}_b"), ports, strict=True):
        lab.docker("run", "-d", "--name", name, "--network", net, "-p", f"{port}:80", IMAGE, *web_cmd(f"from-{name}"))
    for client, port, server in ((names[0], ports[1], names[1]), (names[1], ports[0], names[0])):
        out = wait_for(lambda c=client, p=port: fetch(lab, c, f"http://192.168.101.2:{p}/", timeout=5))
        assert out == f"from-{server}\n", (client, port)
    addresses = (inspect_ip(lab, names[0], f"{tag}_a"), inspect_ip(lab, names[1], f"{tag}_b"))
    assert fetch(lab, names[0], f"http://{addresses[1]}/") == ""
    assert fetch(lab, names[1], f"http://{addresses[0]}/") == ""
    return addresses


def inside_managed_plugin(lab, *args: str) -> str:
    """``multinic ARGS`` run inside the lab's managed plugin, as docs/TROUBLESHOOTING.md says (nsenter into
    its mount and network namespaces); its output."""
    from tests.lab import NETNS_DIR

    host_ns = os.stat(f"{NETNS_DIR}/{lab.host_ns}").st_ino
    pids = subprocess.run(["pgrep", "-f", "/usr/local/bin/multinic serve"], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}/ns/net").st_ino == host_ns:
                proc = subprocess.run(["nsenter", "-t", pid, "-m", "-n", "--", "env",
                                       "DOCKER_HOST=unix:///host/run/docker.sock", "multinic",
                                       "--state-dir", "/host/var/lib/multinic", *args],
                                      capture_output=True, text=True, timeout=60)
                assert proc.returncode == 0, proc.stderr
                return proc.stdout
    raise AssertionError(f"no managed multinic process in {lab.host_ns}: {pids!r}")


def multinic(lab, *args: str) -> subprocess.CompletedProcess:
    """`multinic ...` in the lab's host, against the lab's state and dockerd."""
    return lab.multinic(*args)


def status(lab) -> dict:
    out = multinic(lab, "status", "--json", "--socket", lab.plugin_socket)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def inspect_ip(lab, container: str, net: str) -> str:
    fmt = '{{(index .NetworkSettings.Networks "' + net + '").IPAddress}}'
    return lab.docker("inspect", "-f", fmt, container).stdout.strip()


# busybox-static has no UDP server; the host's python3 mounted read-only serves as one.
HOST_PYTHON = ["-v", "/usr:/usr:ro", "-v", "/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]
UDP_ECHO = (
    "import socket\n"
    "s=socket.socket(socket.AF_INET6 if ':' in '{bind}' else socket.AF_INET,socket.SOCK_DGRAM)\n"
    "s.bind(('{bind}',{port}))\n"
    "while True:\n"
    "    d,a=s.recvfrom(100); s.sendto(d,a)\n"
)
UDP_PING = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.settimeout(2)\n"
    "s.sendto(b'ping', (sys.argv[1], int(sys.argv[2])))\n"
    "print(s.recvfrom(100)[0].decode())\n"
)


def udp_echo_cmd(port: int, bind: str = "0.0.0.0") -> list[str]:
    """A UDP echo server in a container (with :data:`HOST_PYTHON`); on ``::`` it serves both families."""
    return ["/usr/bin/python3", "-c", UDP_ECHO.format(port=port, bind=bind)]


def udp_roundtrip(ns: str, addr: str, port: int) -> bool:
    """Does a datagram sent from lab namespace ``ns`` to ``addr``:``port`` come back (three tries)?"""
    for _ in range(3):
        out = subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", sys.executable, "-c", UDP_PING, addr,
                              str(port)], capture_output=True, text=True)
        if out.stdout.strip() == "ping":
            return True
    return False


from tests.lab import COMPOSE  # noqa: E402


def compose(lab, project_dir: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Compose v2 (installed by scripts/install-engine28.sh) run standalone against the lab's dockerd."""
    env = dict(os.environ, DOCKER_HOST=lab.docker_host, COMPOSE_PROJECT_NAME="mnc")
    proc = subprocess.run([COMPOSE, "--project-directory", project_dir, *args], capture_output=True, text=True,
                          env=env, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"compose {' '.join(args)} failed: {proc.stderr}")
    return proc
