"""The lab's network: a fake multi-homed host and the routers and clients around it, in namespaces.

Addresses are module constants, so tests (e2e and integration alike) never repeat them. The host also
gets a private mount namespace: its ``/run`` and ``/var/lib`` are directories of the lab, so dockerd's
and the plugin's sockets, the plugin's state and the xtables lock never touch the machine's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

NETNS_DIR = "/var/run/netns"
LOCK_DIR = "/tmp/multinic-lab-locks"

HOST_ETH0 = "192.168.100.2"
HOST_ETH1 = "192.168.101.2"
R0_HOST_SIDE = "192.168.100.1"
R1_HOST_SIDE = "192.168.101.1"
R0_CLIENT_SIDE = "203.0.113.1"
R1_CLIENT_SIDE = "198.51.100.1"
C0_ADDR = "203.0.113.10"
C1_ADDR = "198.51.100.10"
ETH0_NET = "192.168.100.0/24"
ETH1_NET = "192.168.101.0/24"
C0_NET = "203.0.113.0/24"
C1_NET = "198.51.100.0/24"
# IPv6 on every link (documentation prefixes): static /64 addresses; the routers advertise themselves
# (radvd) from the link-local fe80::1, so the host learns both IPv6 default routes from router
# advertisements, eth0's preferred (eth1's router advertises a low preference), as on real hosts.
HOST6_ETH0 = "2001:db8:100::2"
HOST6_ETH1 = "2001:db8:101::2"
R0_HOST_SIDE6 = "2001:db8:100::1"
R1_HOST_SIDE6 = "2001:db8:101::1"
R0_CLIENT_SIDE6 = "2001:db8:203::1"
R1_CLIENT_SIDE6 = "2001:db8:198::1"
C0_ADDR6 = "2001:db8:203::10"
C1_ADDR6 = "2001:db8:198::10"
ETH0_NET6 = "2001:db8:100::/64"
ETH1_NET6 = "2001:db8:101::/64"
ROUTER_LL = "fe80::1"  # each router's address on the host's link, the host's IPv6 next hop
RADVD_CONF = """interface {dev} {{
    AdvSendAdvert on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 10;
    AdvDefaultPreference {preference};
{prefixes}}};
"""

LAB_TOOLS = Path(os.environ.get("MULTINIC_LAB_TOOLS", "/opt/multinic-lab"))
TOOLS_PATH = [str(LAB_TOOLS / "tools/root/usr/bin"), str(LAB_TOOLS / "tools/root/usr/sbin")]
TOOLS_LIBS = str(LAB_TOOLS / "tools/root/usr/lib/x86_64-linux-gnu")

_PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")
_DOCKER_VARS = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONFIG",
                "DOCKER_API_VERSION")


class LabError(RuntimeError):
    """A lab command failed; the message carries the command, its exit code and stderr."""


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without proxies (lab traffic is local) or docker client settings."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS and k not in _DOCKER_VARS}
    if extra:
        env.update(extra)
    return env


def fail(cmd: Iterable[str], proc: subprocess.CompletedProcess[str], where: str = "") -> LabError:
    return LabError(
        f"{where}{' '.join(map(str, cmd))}: exit {proc.returncode}\n"
        f"--- stderr ---\n{(proc.stderr or '').strip()}\n--- stdout ---\n{(proc.stdout or '').strip()}"
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.2) -> Any:
    """``predicate()`` until it is truthy or ``timeout`` passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def pids_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (used for our own unique lab paths only)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return found


def exclusive_lock(name: str, busy: str) -> int:
    """A held flock on ``<LOCK_DIR>/<name>`` (the fd), or LabError(busy) if another process holds it."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    fd = os.open(f"{LOCK_DIR}/{name}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LabError(busy) from None
    return fd


def lab_tool(name: str) -> str:
    """A daemon or tool unpacked for the lab (docker-registry, radvd, iperf3)."""
    for directory in TOOLS_PATH:
        if os.access(Path(directory, name), os.X_OK):
            return str(Path(directory, name))
    raise LabError(f"{name} not found under {LAB_TOOLS} (run scripts/install-lab-tools.sh)")


def tool_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a lab tool runs with (its libraries are unpacked beside it)."""
    out = clean_env(env)
    out["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [TOOLS_LIBS, out.get("LD_LIBRARY_PATH")]))
    return out


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise fail(["ip", *args], proc)


class Topology:
    """Namespaces ``<name>-host``, ``-r0``, ``-r1``, ``-c0``, ``-c1``::

        c0 203.0.113.10 --- r0 (203.0.113.1 | 192.168.100.1) --- eth0 192.168.100.2 (main default route)
                                                                   <name>-host
        c1 198.51.100.10 -- r1 (198.51.100.1 | 192.168.101.1) --- eth1 192.168.101.2

    and the same in IPv6 (``*6`` constants: 2001:db8:203::/64, 2001:db8:100::/64, ...), where the host's
    default routes come from the routers' advertisements (radvd, from fe80::1; eth0's preferred).
    r0 has no route to c1's net, r1 no default: a reply to c1 that leaves by eth0 is dropped silently.
    rp_filter on the host is Debian 12's (``all``=0, ``default``=2, 2 on eth0/eth1 unless ``rp_filter``).
    Nothing is done in the machine's own namespaces: veths are made inside the lab's (``ip -n``), and
    processes of the host run with ``nsenter --net --mount`` (not ``ip netns exec``, which remounts
    /sys and breaks dockerd's cgroup detection). ``Topology(name, mount=False)`` skips the mount
    namespace (kernel integration tests, which run no daemon).
    """

    ROLES = ("host", "r0", "r1", "c0", "c1")

    def __init__(self, name: str, *, rp_filter: int = 2, mount: bool = True) -> None:
        if not re.fullmatch(r"[a-z0-9]{1,6}", name):
            raise ValueError(f"lab name must be 1-6 chars of [a-z0-9], got {name!r}")
        self.name = name
        self.rp_filter = rp_filter
        self.dir = Path(f"/tmp/multinic-lab-{name}")
        self.host_ns, self.r0, self.r1, self.c0, self.c1 = (f"{name}-{role}" for role in self.ROLES)
        self.namespaces = [f"{name}-{role}" for role in self.ROLES]
        self.r0_ns, self.r1_ns, self.c0_ns, self.c1_ns = self.r0, self.r1, self.c0, self.c1
        self.with_mount = mount
        self.mount_anchor: subprocess.Popen[bytes] | None = None
        self._name_lock: int | None = None
        self.timings: dict[str, float] = {}

    # -- the host's private /run and /var/lib ------------------------------------------------------
    def host_path(self, path: str | Path) -> Path:
        """Where a path of the lab's host is on the machine (``/run/x`` → ``<dir>/run/x``)."""
        text = str(path)
        for inside, outside in (("/run", "run"), ("/var/run", "run"), ("/var/lib", "varlib")):
            if self.with_mount and (text == inside or text.startswith(inside + "/")):
                return self.dir / outside / text[len(inside):].lstrip("/")
        return Path(text)

    def _start_mount_namespace(self) -> None:
        """A process holding the host's mount namespace: /run and /var/lib are the lab's own
        directories in it (slave propagation: the machine's mounts show up inside, nothing made
        inside shows up outside), /run/systemd is the machine's."""
        run, varlib = self.dir / "run", self.dir / "varlib"
        run.mkdir(mode=0o755)
        varlib.mkdir(mode=0o755)
        script = (
            f"set -e; if [ -d /run/systemd ]; then mkdir -p {run}/systemd; "
            f"mount --rbind /run/systemd {run}/systemd; fi; "
            f"mount --rbind {run} /run; mount --bind {varlib} /var/lib; : > /run/.lab-mounted; "
            f"exec -a {self.dir}/mount-namespace sleep infinity"
        )
        self.mount_anchor = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "--", "bash", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not (run / ".lab-mounted").exists():
            if self.mount_anchor.poll() is not None or time.monotonic() > deadline:
                err = self.mount_anchor.stderr.read().decode(errors="replace") if self.mount_anchor.stderr else ""
                raise LabError(f"the lab's mount namespace did not come up: {err}")
            time.sleep(0.02)

    # -- commands ----------------------------------------------------------------------------------
    def ns(self, ns: str) -> str:
        """Full namespace name: a role (``"host"``, ``"r0"``, ...) or a full name."""
        if ns in self.ROLES:
            return f"{self.name}-{ns}"
        if ns not in self.namespaces:
            raise ValueError(f"{ns!r} is not a namespace of {self!r} ({', '.join(self.namespaces)})")
        return ns

    def nsenter(self, ns: str) -> list[str]:
        """The command prefix entering ``ns`` (for the host: its mount namespace too)."""
        full = self.ns(ns)
        cmd = ["nsenter", f"--net={NETNS_DIR}/{full}"]
        if full == self.host_ns and self.mount_anchor is not None:
            cmd.append(f"--mount=/proc/{self.mount_anchor.pid}/ns/mnt")
        return cmd

    def run(
        self, ns: str, *cmd: str, check: bool = True, timeout: float | None = 60, input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in one of the lab's namespaces; text CompletedProcess."""
        full = [*self.nsenter(ns), *map(str, cmd)]
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input,
                                  env=clean_env(env))
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"[{self.ns(ns)}] {' '.join(map(str, cmd))}: timed out after {timeout}s") from exc
        if check and proc.returncode != 0:
            raise fail(cmd, proc, f"[{self.ns(ns)}] ")
        return proc

    def host(self, *cmd: str, check: bool = True, timeout: float | None = 60) -> subprocess.CompletedProcess[str]:
        return self.run(self.host_ns, *cmd, check=check, timeout=timeout)

    def sh(self, ns: str, script: str, check: bool = True, timeout: float | None = 60) -> str:
        """``sh -c script`` in a namespace; returns stdout."""
        return self.run(ns, "sh", "-c", script, check=check, timeout=timeout).stdout

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Write a sysctl of a lab namespace (/proc/sys/net follows the writer's netns)."""
        self.run(ns, "sysctl", "-q", "-w", f"{key}={value}")

    # -- building and removing -----------------------------------------------------------------------
    def up(self) -> None:
        """Create the namespaces, veths, addresses and routes (a stale lab of that name is removed first)."""
        t0 = time.monotonic()
        self._lock_name()
        if any(Path(NETNS_DIR, n).exists() for n in self.namespaces) or self.dir.exists():
            self.remove_stale()
        try:
            self.dir.mkdir(parents=True)
            for ns in self.namespaces:
                ip("netns", "add", ns)
                self.run(ns, "ip", "link", "set", "lo", "up")
                # No duplicate address detection on the lab's links (every address is the lab's own):
                # link-local addresses are usable, and dumps stable, the moment a link is up.
                for scope in ("all", "default"):
                    self.sysctl(ns, f"net.ipv6.conf.{scope}.accept_dad", "0")
            h, r0, r1, c0, c1 = self.namespaces
            self._veth(h, "eth0", r0, "h0")
            self._veth(h, "eth1", r1, "h1")
            self._veth(r0, "c0", c0, "eth0")
            self._veth(r1, "c1", c1, "eth0")
            for ns, dev, cidr in ((h, "eth0", HOST_ETH0), (h, "eth1", HOST_ETH1), (r0, "h0", R0_HOST_SIDE),
                                  (r0, "c0", R0_CLIENT_SIDE), (r1, "h1", R1_HOST_SIDE), (r1, "c1", R1_CLIENT_SIDE),
                                  (c0, "eth0", C0_ADDR), (c1, "eth0", C1_ADDR)):
                self.run(ns, "ip", "addr", "add", f"{cidr}/24", "dev", dev)
            self.run(h, "ip", "route", "add", "default", "via", R0_HOST_SIDE, "dev", "eth0")
            self.run(c0, "ip", "route", "add", "default", "via", R0_CLIENT_SIDE, "dev", "eth0")
            self.run(c1, "ip", "route", "add", "default", "via", R1_CLIENT_SIDE, "dev", "eth0")
            self._ipv6()
            for ns in (h, r0, r1):
                self.sysctl(ns, "net.ipv4.ip_forward", "1")
            self.sysctl(h, "net.ipv4.conf.all.rp_filter", "0")
            self.sysctl(h, "net.ipv4.conf.default.rp_filter", "2")
            for dev in ("eth0", "eth1"):
                self.sysctl(h, f"net.ipv4.conf.{dev}.rp_filter", str(self.rp_filter))
            if self.with_mount:
                self._start_mount_namespace()
            self.start_router_advertisements()
        except BaseException:
            self.down_topology()
            raise
        self.timings["up"] = time.monotonic() - t0

    def _ipv6(self) -> None:
        """Static IPv6 addresses on every link (no duplicate address detection: the lab is ours), the
        routers' fe80::1 on the host's links, the clients' default routes, the routers forwarding."""
        h, r0, r1, c0, c1 = self.namespaces
        for ns, dev in ((r0, "h0"), (r1, "h1")):
            self.run(ns, "ip", "link", "set", dev, "addrgenmode", "none")
            self.run(ns, "ip", "-6", "addr", "flush", "dev", dev, "scope", "link")
            self.run(ns, "ip", "-6", "addr", "add", f"{ROUTER_LL}/64", "dev", dev, "nodad")
        for ns, dev, address in ((h, "eth0", HOST6_ETH0), (h, "eth1", HOST6_ETH1), (r0, "h0", R0_HOST_SIDE6),
                                 (r0, "c0", R0_CLIENT_SIDE6), (r1, "h1", R1_HOST_SIDE6),
                                 (r1, "c1", R1_CLIENT_SIDE6), (c0, "eth0", C0_ADDR6), (c1, "eth0", C1_ADDR6)):
            self.run(ns, "ip", "-6", "addr", "add", f"{address}/64", "dev", dev, "nodad")
        self.run(c0, "ip", "-6", "route", "add", "default", "via", R0_CLIENT_SIDE6, "dev", "eth0")
        self.run(c1, "ip", "-6", "route", "add", "default", "via", R1_CLIENT_SIDE6, "dev", "eth0")
        for ns in (r0, r1):
            self.sysctl(ns, "net.ipv6.conf.all.forwarding", "1")

    def start_router_advertisements(self) -> None:
        """radvd on both routers' host-facing links; returns once the host learned both default routes."""
        for role in ("r0", "r1"):
            self.advertise(role)

    def advertise(self, role: str, prefixes: Iterable[str] | None = None, *, autonomous: bool = False,
                  wait: bool = True) -> None:
        """(Re)start radvd on router ``role`` (r0: medium preference, r1: low, so eth0's default route is the
        host's own) advertising ``prefixes`` (default: the link's), for address autoconfiguration too if
        ``autonomous``; with ``wait``, returns once the host has a default route through that router."""
        self.stop_router_advertisements(role)
        dev, preference, default_prefix, host_dev = {"r0": ("h0", "medium", ETH0_NET6, "eth0"),
                                                     "r1": ("h1", "low", ETH1_NET6, "eth1")}[role]
        conf = self.dir / f"radvd-{role}.conf"
        on = "on" if autonomous else "off"
        conf.write_text(RADVD_CONF.format(dev=dev, preference=preference, prefixes="".join(
            f"    prefix {p} {{ AdvOnLink on; AdvAutonomous {on}; }};\n" for p in prefixes or (default_prefix,))))
        subprocess.Popen(
            [*self.nsenter(role), lab_tool("radvd"), "--nodaemon", "-C", str(conf), "-p",
             str(self.dir / f"radvd-{role}.pid"), "-m", "logfile", "-l", str(self.dir / f"radvd-{role}.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=tool_env(), start_new_session=True)
        deadline = time.monotonic() + 20
        while wait:
            routes = self.run(self.host_ns, "ip", "-6", "route", "show", "default").stdout
            if re.search(rf"via fe80::\S+ dev {host_dev} proto ra", routes):
                return
            if time.monotonic() > deadline:
                logs = "".join(p.read_text() for p in self.dir.glob("radvd-*.log"))
                raise LabError(f"the host learned no IPv6 default route from {role}'s radvd within 20 s:\n"
                               f"{routes}\n{logs}")
            time.sleep(0.05)

    def stop_router_advertisements(self, role: str) -> None:
        """Stop a router's radvd, if it runs: it sends a last advertisement with router lifetime 0, and the
        host drops its default route through that router at once."""
        pid_file = self.dir / f"radvd-{role}.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
            wait_pid_gone(pid, 5)
        pid_file.unlink(missing_ok=True)

    def remove_stale(self) -> None:
        """What a crashed run of a lab with this name left (no live lab holds the name)."""
        self.down_topology()

    def _lock_name(self) -> None:
        """Hold ``<LOCK_DIR>/lab-<name>.lock`` while the lab exists: a second live lab of that name is refused."""
        if self._name_lock is None:
            self._name_lock = exclusive_lock(
                f"lab-{self.name}.lock", f"a lab named {self.name!r} is in use by another process; pick another name"
            )

    def release_name(self) -> None:
        if self._name_lock is not None:
            os.close(self._name_lock)
            self._name_lock = None

    @staticmethod
    def _veth(ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
        ip("-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
        ip("-n", ns_a, "link", "set", dev_a, "up")
        ip("-n", ns_b, "link", "set", dev_b, "up")

    def kill_lab_processes(self) -> None:
        """Every process naming the lab's directory (daemons, the mount namespace's holder) or living
        in one of its network namespaces: SIGTERM, then SIGKILL."""
        inodes = set()
        for ns in self.namespaces:
            with contextlib.suppress(OSError):
                inodes.add(f"net:[{os.stat(Path(NETNS_DIR, ns)).st_ino}]")

        def ours() -> list[int]:
            pids = set(pids_mentioning(str(self.dir)))
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) != os.getpid():
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{entry}/ns/net") in inodes and pid_alive(int(entry)):
                            pids.add(int(entry))
            return sorted(pids)

        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = ours()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            for pid in pids:
                wait_pid_gone(pid, 5)
        if self.mount_anchor is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.mount_anchor.wait(timeout=5)
            self.mount_anchor = None

    def down_topology(self, errors: list[str] | None = None) -> None:
        """Processes, namespaces and the work directory, whatever state they are in."""
        errors = [] if errors is None else errors
        self.kill_lab_processes()
        for ns in self.namespaces:
            if Path(NETNS_DIR, ns).exists():
                proc = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
                if proc.returncode != 0:
                    errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
        if self.dir.exists():
            import shutil

            try:
                shutil.rmtree(self.dir)
            except OSError as exc:
                errors.append(f"work dir: {exc}")

    def leftovers(self) -> list[str]:
        """What of this lab still exists (empty after a clean ``down()``)."""
        found = [f"netns {n}" for n in self.namespaces if Path(NETNS_DIR, n).exists()]
        found += [f"pid {p}" for p in pids_mentioning(str(self.dir))]
        if self.dir.exists():
            found.append(f"dir {self.dir}")
        return found

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __enter__(self) -> Any:
        try:
            self.up()
        except BaseException:
            self.release_name()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.down_topology()
        finally:
            self.release_name()
