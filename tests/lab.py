"""A fake multi-homed Docker host built from network namespaces, for end-to-end tests.

Topology (every name is prefixed with the lab name, e.g. ``mn20-host``)::

    c0 (203.0.113.10/24) --- r0 (203.0.113.1 | 192.168.100.1) ---+
                                                                 | eth0 192.168.100.2/24  (main default route)
                                                          <name>-host  (dockerd + plugin, ip_forward=1)
                                                                 | eth1 192.168.101.2/24
    c1 (198.51.100.10/24) --- r1 (198.51.100.1 | 192.168.101.1) -+

- r0 routes between c0 and the host's eth0 net only; it has no route to 198.51.100.0/24 (nor to
  192.168.101.0/24, nor a default), so a reply to c1 that leaves through eth0 is dropped there
  silently (no ICMP can be sent back either: r0 has no route to the replying address).
- r1 routes between c1 and the host's eth1 net; no default route and no route to Docker's subnets
  unless a test adds one (``lab.run(lab.r1, "ip", "route", "add", ...)``).
- c1 is reachable only through eth1's router, c0 only through eth0's.
- rp_filter in the host ns is set like a stock Debian 12 host (systemd's 50-default.conf): ``all``=0,
  ``default``=2 and 2 (loose) on eth0/eth1 (``Lab(rp_filter=...)`` changes the per-interface value).

Nothing is done in the machine's own (root) network namespace: veth pairs are created directly inside
the lab namespaces (``ip -n``), dockerd and the plugin are started with ``nsenter --net`` (not
``ip netns exec``, which remounts /sys and breaks dockerd's cgroup detection). ``down()`` removes
everything, also after a partial or crashed setup (call it with the same name).

Only the standard library is used. Run as root.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

REPO_ROOT = Path(__file__).resolve().parent.parent
LAB_TOOLS = Path(os.environ.get("MULTINIC_LAB_TOOLS", "/opt/multinic-lab"))
_TOOLS = [str(LAB_TOOLS / "tools/root/usr/bin"), str(LAB_TOOLS / "tools/root/usr/sbin")]
ENGINES = {
    # engine -> directories put first on PATH for dockerd (containerd, shims, docker-proxy follow PATH)
    e: [str(LAB_TOOLS / f"engine-{e}/root/usr/bin"), str(LAB_TOOLS / f"engine-{e}/root/usr/sbin"), *_TOOLS]
    for e in ("20.10", "28.5")
}
DOCKERD = {e: str(LAB_TOOLS / f"engine-{e}/root/usr/sbin/dockerd") for e in ENGINES}
IMAGE = "mn-busybox:latest"
BUSYBOX = "/bin/busybox"
NETNS_DIR = "/var/run/netns"
PLUGIN_DIR = "/run/docker/plugins"
LOCK_DIR = "/tmp/multinic-lab-locks"

# Addresses of the topology (exported so tests do not repeat literals).
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

_PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")
_DOCKER_VARS = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_CONFIG",
    "DOCKER_API_VERSION",
)


class LabError(RuntimeError):
    """A lab command failed; the message carries the command, its exit code and stderr."""


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without proxies (lab traffic is local) or docker client settings."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS and k not in _DOCKER_VARS}
    if extra:
        env.update(extra)
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path})"
    return "\n".join(text.splitlines()[-lines:])


def _fail(cmd: Iterable[str], proc: subprocess.CompletedProcess[str], where: str = "") -> LabError:
    return LabError(
        f"{where}{' '.join(map(str, cmd))}: exit {proc.returncode}\n"
        f"--- stderr ---\n{(proc.stderr or '').strip()}\n--- stdout ---\n{(proc.stdout or '').strip()}"
    )


def _pid_alive(pid: int) -> bool:
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


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid)


def _pids_mentioning(text: str) -> list[int]:
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


_PEER_ECHO = r"""
import socket, sys
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(64)
print("ready", flush=True)
while True:
    conn, peer = srv.accept()
    try:
        conn.sendall((peer[0] + "\n").encode())
    except OSError:
        pass
    finally:
        conn.close()
"""

_HTTP_GET = r"""
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as resp:
        sys.stdout.write(resp.read().decode("utf-8", "replace"))
except Exception as exc:
    sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
    sys.exit(1)
"""

_TCP_READ = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    sys.stdout.write(data.decode("utf-8", "replace"))
except Exception as exc:
    sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
    sys.exit(1)
"""


def _exclusive_lock(name: str, busy: str) -> int:
    """A held flock on ``<LOCK_DIR>/<name>`` (the fd), or LabError(busy) if another process holds it."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    fd = os.open(f"{LOCK_DIR}/{name}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LabError(busy) from None
    return fd


class Lab:
    """One fake multi-homed host with its own dockerd; see the module docstring for the topology.

    ``Lab(name, engine="20.10"|"28.5", driver="multinic")``: ``name`` (<= 6 chars, [a-z0-9]) prefixes
    every namespace and names the work dir ``/tmp/multinic-lab-<name>/``, so labs with different
    names never share namespaces, sockets or data-roots. The plugin socket is named after the driver
    (``/run/docker/plugins/<driver>.sock``, where dockerd looks for legacy plugins), so two labs running
    a plugin at the same time need different ``driver`` names; ``start_plugin`` enforces that with a lock.
    """

    ROLES = ("host", "r0", "r1", "c0", "c1")

    def __init__(
        self, name: str, engine: str = "20.10", driver: str = "multinic", *, rp_filter: int = 2,
        iptables: str = "nft",
    ) -> None:
        if not re.fullmatch(r"[a-z0-9]{1,6}", name):
            raise ValueError(f"lab name must be 1-6 chars of [a-z0-9], got {name!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {engine!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", driver):
            raise ValueError(f"bad driver name {driver!r}")
        if iptables not in ("nft", "legacy"):
            raise ValueError(f"iptables must be 'nft' or 'legacy', got {iptables!r}")
        self.iptables = iptables  # the flavour the host's `iptables` is (dockerd and the plugin see it)
        self.iptables_save = "iptables-save" if iptables == "nft" else "iptables-legacy-save"
        self.name = name
        self.engine = engine
        self.driver = driver
        self.rp_filter = rp_filter
        self.dir = Path(f"/tmp/multinic-lab-{name}")
        self.host_ns = f"{name}-host"
        self.r0 = f"{name}-r0"
        self.r1 = f"{name}-r1"
        self.c0 = f"{name}-c0"
        self.c1 = f"{name}-c1"
        self.namespaces = [f"{name}-{role}" for role in self.ROLES]
        # aliases: lab.r0 == lab.r0_ns etc.
        self.r0_ns, self.r1_ns, self.c0_ns, self.c1_ns = self.r0, self.r1, self.c0, self.c1
        self.docker_sock = self.dir / "docker.sock"
        self.docker_host = f"unix://{self.docker_sock}"
        # dockerd also listens here: a managed plugin sees the host's /run (as /host/run), not /tmp.
        self.run_docker_sock = Path(f"/run/multinic-lab-{name}.sock")
        self.data_root = self.dir / "data"
        self.exec_root = self.dir / "exec"
        self.pidfile = self.dir / "dockerd.pid"
        self.dockerd_log = self.dir / "dockerd.log"
        self.plugin_log = self.dir / "plugin.log"
        self.state_dir = self.dir / "state"
        self.plugin_socket = f"{PLUGIN_DIR}/{driver}.sock"
        self.cgroup_parent = f"multinic-lab-{name}"
        self.docker_bin = str(LAB_TOOLS / "engine-28.5/root/usr/bin/docker")
        self._dockerd: subprocess.Popen[bytes] | None = None
        self._plugin: subprocess.Popen[bytes] | None = None
        self._plugin_lock: int | None = None
        self._plugin_started = False
        self._name_lock: int | None = None
        self.plugin_root = REPO_ROOT  # cwd and first PYTHONPATH entry of the plugin process
        # interpreter of the plugin: needs the plugin's dependencies (flask, gunicorn, pyroute2, ...)
        self.plugin_python = os.environ.get("MULTINIC_LAB_PYTHON") or sys.executable
        self.server_version = ""
        self._background: list[subprocess.Popen[bytes]] = []
        self._counters = 0
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Lab:
        try:
            self.up()
            self.start_dockerd()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()

    @staticmethod
    def cli() -> str:
        return str(LAB_TOOLS / "engine-28.5/root/usr/bin/docker")

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, engine={self.engine!r}, driver={self.driver!r})"

    # ------------------------------------------------------------------ commands
    def ns(self, ns: str) -> str:
        """Full namespace name: accepts a role (``"host"``, ``"r0"``, ``"r1"``, ``"c0"``, ``"c1"``) or a full name."""
        if ns in self.ROLES:
            return f"{self.name}-{ns}"
        if ns not in self.namespaces:
            raise ValueError(f"{ns!r} is not a namespace of {self!r} ({', '.join(self.namespaces)})")
        return ns

    def nsenter(self, ns: str) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR}/{self.ns(ns)}"]

    def run(
        self, ns: str, *cmd: str, check: bool = True, timeout: float | None = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in one of the lab's namespaces (nsenter --net); text CompletedProcess."""
        full = [*self.nsenter(ns), *map(str, cmd)]
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input, env=_clean_env())
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"[{self.ns(ns)}] {' '.join(map(str, cmd))}: timed out after {timeout}s") from exc
        if check and proc.returncode != 0:
            raise _fail(cmd, proc, f"[{self.ns(ns)}] ")
        return proc

    def host(self, *cmd: str, check: bool = True, timeout: float | None = 60) -> subprocess.CompletedProcess[str]:
        return self.run(self.host_ns, *cmd, check=check, timeout=timeout)

    def sh(self, ns: str, script: str, check: bool = True, timeout: float | None = 60) -> str:
        """``sh -c script`` in a namespace; returns stdout."""
        return self.run(ns, "sh", "-c", script, check=check, timeout=timeout).stdout

    def docker(
        self, *args: str, check: bool = True, timeout: float | None = 120, input: str | bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this lab's dockerd (DOCKER_HOST set, private DOCKER_CONFIG)."""
        cmd = [self.docker_bin, *map(str, args)]
        env = _clean_env({"DOCKER_HOST": self.docker_host, "DOCKER_CONFIG": str(self.dir / "cli")})
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input, env=env)
        except subprocess.TimeoutExpired as exc:
            raise LabError(
                f"docker {' '.join(map(str, args))}: timed out after {timeout}s "
                f"(dockerd log tail:\n{_tail(self.dockerd_log, 15)})"
            ) from exc
        if check and proc.returncode != 0:
            raise _fail(["docker", *args], proc)
        return proc

    def container_exec(
        self, name: str, *cmd: str, check: bool = True, timeout: float | None = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.docker("exec", name, *cmd, check=check, timeout=timeout)

    def container_pid(self, name: str) -> int:
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())

    def inspect(self, obj: str) -> Any:
        """``docker inspect`` parsed (first element)."""
        return json.loads(self.docker("inspect", obj).stdout)[0]

    # ------------------------------------------------------------------ topology
    def up(self) -> None:
        """Create the five namespaces, veths, addresses and routes (removes a stale lab of that name first)."""
        t0 = time.monotonic()
        self._lock_name()
        if any(Path(NETNS_DIR, n).exists() for n in self.namespaces) or self.dir.exists():
            self.down(release=False)  # leftovers of a crashed run with this name (no live lab holds the name)
        try:
            self.dir.mkdir(parents=True)
            for ns in self.namespaces:
                self._ip("netns", "add", ns)
            for ns in self.namespaces:
                self.run(ns, "ip", "link", "set", "lo", "up")
            h, r0, r1, c0, c1 = self.namespaces
            # veths are created inside the lab namespaces, both ends: nothing appears in the root ns.
            self._veth(h, "eth0", r0, "h0")
            self._veth(h, "eth1", r1, "h1")
            self._veth(r0, "c0", c0, "eth0")
            self._veth(r1, "c1", c1, "eth0")
            self._addr(h, "eth0", f"{HOST_ETH0}/24")
            self._addr(h, "eth1", f"{HOST_ETH1}/24")
            self._addr(r0, "h0", f"{R0_HOST_SIDE}/24")
            self._addr(r0, "c0", f"{R0_CLIENT_SIDE}/24")
            self._addr(r1, "h1", f"{R1_HOST_SIDE}/24")
            self._addr(r1, "c1", f"{R1_CLIENT_SIDE}/24")
            self._addr(c0, "eth0", f"{C0_ADDR}/24")
            self._addr(c1, "eth0", f"{C1_ADDR}/24")
            self.run(h, "ip", "route", "add", "default", "via", R0_HOST_SIDE, "dev", "eth0")
            self.run(c0, "ip", "route", "add", "default", "via", R0_CLIENT_SIDE, "dev", "eth0")
            self.run(c1, "ip", "route", "add", "default", "via", R1_CLIENT_SIDE, "dev", "eth0")
            for ns in (h, r0, r1):
                self.sysctl(ns, "net.ipv4.ip_forward", "1")
            self.sysctl(h, "net.ipv4.conf.all.rp_filter", "0")
            self.sysctl(h, "net.ipv4.conf.default.rp_filter", "2")
            for dev in ("eth0", "eth1"):
                self.sysctl(h, f"net.ipv4.conf.{dev}.rp_filter", str(self.rp_filter))
        except BaseException:
            self.down()
            raise
        self.timings["up"] = time.monotonic() - t0

    def _lock_name(self) -> None:
        """Hold ``<LOCK_DIR>/lab-<name>.lock`` while the lab exists: a second live lab of that name is refused."""
        if self._name_lock is not None:
            return
        self._name_lock = _exclusive_lock(
            f"lab-{self.name}.lock", f"a lab named {self.name!r} is in use by another process; pick another name"
        )

    @staticmethod
    def _ip(*args: str) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise _fail(["ip", *args], proc)

    def _veth(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
        self._ip("-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
        self._ip("-n", ns_a, "link", "set", dev_a, "up")
        self._ip("-n", ns_b, "link", "set", dev_b, "up")

    def _addr(self, ns: str, dev: str, cidr: str) -> None:
        self.run(ns, "ip", "addr", "add", cidr, "dev", dev)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Write a sysctl of a lab namespace (/proc/sys/net follows the writer's netns)."""
        self.run(ns, "sysctl", "-q", "-w", f"{key}={value}")

    # ------------------------------------------------------------------ dockerd
    def _dockerd_env(self) -> dict[str, str]:
        env = _clean_env()
        env["PATH"] = os.pathsep.join([*ENGINES[self.engine], env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
        return self._with_iptables_flavour(env)

    def _with_iptables_flavour(self, env: dict[str, str]) -> dict[str, str]:
        """A legacy-iptables host: ``iptables*`` on PATH are the legacy tools (as after
        ``update-alternatives --set iptables iptables-legacy``), for dockerd and the plugin alike."""
        if self.iptables == "nft":
            return env
        shim = self.dir / "iptables-legacy-bin"
        shim.mkdir(parents=True, exist_ok=True)
        for tool in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                     "ip6tables-restore"):
            link = shim / tool
            if not link.exists():
                link.symlink_to(f"/usr/sbin/{tool.replace('tables', 'tables-legacy', 1)}")
        env["PATH"] = os.pathsep.join([str(shim), env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
        return env

    def start_dockerd(self, extra_args: Iterable[str] = (), timeout: float = 90) -> None:
        """Start this lab's dockerd in the host ns, wait for ``docker version``, import ``mn-busybox:latest``."""
        if self._dockerd is not None and self._dockerd.poll() is None:
            return
        t0 = time.monotonic()
        env = self._dockerd_env()
        dockerd = DOCKERD[self.engine]
        if not os.access(dockerd, os.X_OK):
            raise LabError(
                f"dockerd for engine {self.engine} not found at {dockerd}"
                + (" (run scripts/install-engine28.sh)" if self.engine == "28.5" else "")
            )
        for d in (self.data_root, self.exec_root, self.dir / "cli"):
            d.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {}
        if self.engine == "20.10":
            config["deprecated-key-path"] = str(self.dir / "key.json")  # else it writes /etc/docker/key.json
        config_file = self.dir / "daemon.json"
        config_file.write_text(json.dumps(config))
        cmd = [
            *self.nsenter(self.host_ns),
            dockerd,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "-H",
            self.docker_host,
            "-H",
            f"unix://{self.run_docker_sock}",
            "--pidfile",
            str(self.pidfile),
            "--config-file",
            str(config_file),
            "--cgroup-parent",
            f"/{self.cgroup_parent}",
            *extra_args,
        ]
        log = open(self.dockerd_log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._dockerd = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._dockerd.poll() is not None:
                rc = self._dockerd.returncode
                self._dockerd = None
                raise LabError(f"dockerd ({self.engine}) exited with {rc}:\n{_tail(self.dockerd_log)}")
            if self.docker_sock.exists():
                probe = self.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=10)
                if probe.returncode == 0:
                    self.server_version = probe.stdout.strip()
                    if not self.server_version.startswith(self.engine + "."):
                        self.stop_dockerd()
                        raise LabError(f"asked for engine {self.engine}, {dockerd} is {self.server_version}")
                    break
            if time.monotonic() > deadline:
                self.stop_dockerd()
                raise LabError(f"dockerd ({self.engine}) did not answer in {timeout}s:\n{_tail(self.dockerd_log)}")
            time.sleep(0.2)
        self.timings["dockerd_ready"] = time.monotonic() - t0
        self._import_image()
        self.timings["start_dockerd"] = time.monotonic() - t0

    def dockerd_running(self) -> bool:
        return self._dockerd is not None and self._dockerd.poll() is None

    def _busybox_tar(self) -> bytes:
        """A rootfs: /bin/busybox (static) + a symlink per applet, /www, /tmp, /etc/{passwd,group}."""
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
        buf = io.BytesIO()
        now = int(time.time())

        def add_dir(tar: tarfile.TarFile, path: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
            tar.addfile(info)

        def add_file(tar: tarfile.TarFile, path: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))

        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d in (
                "bin",
                "sbin",
                "usr",
                "usr/bin",
                "usr/sbin",
                "etc",
                "root",
                "www",
                "proc",
                "sys",
                "dev",
                "var",
                "var/run",
                "run",
            ):
                add_dir(tar, d)
            add_dir(tar, "tmp", 0o1777)
            add_file(tar, "bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
            for applet in applets:
                if applet == "busybox":
                    continue
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, "busybox", 0o777, now
                tar.addfile(info)
            add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
            add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
            add_file(tar, "www/index.html", b"multinic-lab\n")
        return buf.getvalue()

    def _import_image(self) -> None:
        if self.docker("image", "inspect", IMAGE, check=False).returncode == 0:
            return
        tar_path = self.dir / "busybox-rootfs.tar"
        tar_path.write_bytes(self._busybox_tar())
        self.docker(
            "import",
            "-c",
            "ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin",
            "-c",
            'CMD ["/bin/sh"]',
            str(tar_path),
            IMAGE,
            timeout=120,
        )

    def stop_dockerd(self, timeout: float = 30, remove_containers: bool = True) -> None:
        """``docker rm -f`` every container (unless ``remove_containers`` is false: a restart keeps them),
        then SIGTERM dockerd, wait, SIGKILL its process group."""
        pid = None
        if self._dockerd is not None:
            pid = self._dockerd.pid
        elif self.pidfile.exists():  # dockerd of an earlier run with this name
            with contextlib.suppress(ValueError, OSError):
                pid = int(self.pidfile.read_text().strip())
                if not _pid_alive(pid) or str(self.dir) not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                    pid = None
        if remove_containers and pid is not None and _pid_alive(pid) and self.docker_sock.exists():
            ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=60)
        if pid is not None and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_pid_gone(pid, timeout):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_pid_gone(pid, 10)
        if self._dockerd is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._dockerd.wait(timeout=5)
            self._dockerd = None
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """Containers and daemons of this lab still alive (after a crash): runc delete, then kill by our paths."""
        runc_roots = list(self.exec_root.glob("runtime-runc/*")) if self.exec_root.exists() else []
        for root in runc_roots:
            ids = subprocess.run([str(LAB_TOOLS / "tools/root/usr/sbin/runc"), "--root", str(root), "list", "-q"], capture_output=True, text=True)
            for cid in ids.stdout.split():
                subprocess.run([str(LAB_TOOLS / "tools/root/usr/sbin/runc"), "--root", str(root), "delete", "--force", cid], capture_output=True)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = _pids_mentioning(str(self.dir))
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            for pid in pids:
                _wait_pid_gone(pid, 5)

    # ------------------------------------------------------------------ plugin
    def _lock_driver(self) -> None:
        if self._plugin_lock is not None:
            return
        fd = _exclusive_lock(
            f"{self.driver}.lock",
            f"plugin socket {self.plugin_socket} is in use by another lab; give this lab another driver name",
        )
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.name} {os.getpid()}\n".encode())
        self._plugin_lock = fd

    def _unlock_driver(self) -> None:
        if self._plugin_lock is not None:
            os.close(self._plugin_lock)
            self._plugin_lock = None

    def plugin_running(self) -> bool:
        return self._plugin is not None and self._plugin.poll() is None

    def plugin_exit_code(self) -> int | None:
        """Exit code of a plugin that died on its own (not through stop_plugin), else None."""
        return self._plugin.poll() if self._plugin is not None else None

    def plugin_log_tail(self, lines: int = 40) -> str:
        return _tail(self.plugin_log, lines)

    def start_plugin(
        self, env: dict[str, str] | None = None, timeout: float = 20, args: Iterable[str] = ()
    ) -> subprocess.Popen[bytes]:
        """Start ``<plugin_python> -m plugin.cli serve --socket <plugin_socket>`` in the host ns (cwd and
        PYTHONPATH ``plugin_root``, env MULTINIC_STATE_DIR=<dir>/state, DOCKER_HOST=<docker_host>, plus ``env``),
        output to ``<dir>/plugin.log``; wait until the socket accepts connections (``timeout`` s)."""
        if self.plugin_running():
            raise LabError("plugin already running; stop_plugin() first")
        self._lock_driver()
        self._plugin_started = True
        os.makedirs(PLUGIN_DIR, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.plugin_socket)  # stale: we must see the new one appear
        self.state_dir.mkdir(parents=True, exist_ok=True)
        penv = _clean_env(
            {
                "MULTINIC_STATE_DIR": str(self.state_dir),
                "DOCKER_HOST": self.docker_host,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(self.plugin_root), os.environ.get("PYTHONPATH")])),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if env:
            penv.update(env)
        penv = self._with_iptables_flavour(penv)
        cmd = [
            *self.nsenter(self.host_ns),
            self.plugin_python,
            "-m",
            "plugin.cli",
            "serve",
            "--socket",
            self.plugin_socket,
            *args,
        ]
        log = open(self.plugin_log, "ab")  # noqa: SIM115 - handed to the child
        try:
            log.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            self._plugin = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=penv,
                cwd=str(self.plugin_root),
                start_new_session=True,
            )
        finally:
            log.close()
        t0 = time.monotonic()
        while True:
            if self._plugin.poll() is not None:
                rc = self._plugin.returncode
                self._plugin = None
                tail = _tail(self.plugin_log)
                hint = ""
                if "ModuleNotFoundError" in tail:
                    hint = (
                        f"\n(hint: {self.plugin_python} lacks the plugin's dependencies: run the tests with the "
                        "interpreter the plugin is installed in, or set MULTINIC_LAB_PYTHON to it)"
                    )
                raise LabError(f"plugin exited with {rc} before listening:\n{tail}{hint}")
            if os.path.exists(self.plugin_socket) and self._connectable(self.plugin_socket):
                break
            if time.monotonic() - t0 > timeout:
                self.stop_plugin()
                raise LabError(
                    f"plugin socket {self.plugin_socket} did not appear in {timeout}s:\n{_tail(self.plugin_log)}"
                )
            time.sleep(0.1)
        self.timings["start_plugin"] = time.monotonic() - t0
        return self._plugin

    @staticmethod
    def _connectable(path: str) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect(path)
            except OSError:
                return False
        return True

    def stop_plugin(self, timeout: float = 15) -> int | None:
        """SIGTERM the plugin's process group, wait, then SIGKILL; returns its exit code (None if not running)."""
        proc, self._plugin = self._plugin, None
        if proc is None:
            return None
        return self._stop_group(proc, timeout)

    @staticmethod
    def _stop_group(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # workers of a dead master may linger in the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    # ------------------------------------------------------------------ traffic helpers
    def http_get(self, ns: str, url: str, timeout: float = 5) -> str | None:
        """GET ``url`` from a lab namespace (python urllib, no proxy); body, or None on any failure."""
        proc = self.run(ns, sys.executable, "-c", _HTTP_GET, url, str(timeout), check=False, timeout=timeout + 10)
        return proc.stdout if proc.returncode == 0 else None

    def tcp_read(self, ns: str, host: str, port: int, timeout: float = 5) -> str | None:
        """Connect from a lab namespace, read until the peer closes; the data, or None on failure."""
        proc = self.run(
            ns, sys.executable, "-c", _TCP_READ, host, str(port), str(timeout), check=False, timeout=timeout + 10
        )
        return proc.stdout if proc.returncode == 0 else None

    def serve_peer_echo(self, ns: str, port: int, bind: str = "0.0.0.0") -> subprocess.Popen[bytes]:
        """Background TCP server in a namespace answering each connection with the peer's IP and a newline."""
        cmd = [*self.nsenter(ns), sys.executable, "-c", _PEER_ECHO, bind, str(port)]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=_clean_env(),
            start_new_session=True,
        )
        self._background.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline() if ready else b""  # type: ignore[union-attr]
        if line.strip() != b"ready":
            self._stop_group(proc, 2)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""  # type: ignore[union-attr]
            raise LabError(f"peer echo server on {self.ns(ns)}:{port} did not start: {err}")
        return proc

    def stop_background(self) -> None:
        while self._background:
            self._stop_group(self._background.pop(), 5)

    def add_counter(self, ns: str, *match: str, table: str = "raw", chain: str = "PREROUTING") -> Callable[[], int]:
        """Append a target-less (counting only) iptables rule with ``match`` to ``chain`` of ``table`` in ``ns``
        and return a function reading its packet count. Meant for the routers and clients (r0/r1/c0/c1): on the
        host ns it would show up in ``dump_host_state``. Removed with the namespace."""
        self._counters += 1
        tag = f"mn-lab-counter-{self._counters}"
        self.run(ns, "iptables", "-w", "-t", table, "-A", chain, *match, "-m", "comment", "--comment", tag)

        def read() -> int:
            out = self.run(ns, "iptables-save", "-c", "-t", table).stdout
            for line in out.splitlines():
                if f"--comment {tag}" in line or f'--comment "{tag}"' in line:
                    m = re.match(r"\[(\d+):\d+\]", line)
                    if m:
                        return int(m.group(1))
            raise LabError(f"counter {tag} not found in {self.ns(ns)}:\n{out}")

        return read

    # ------------------------------------------------------------------ state dump
    def dump_host_state(self, tables: Iterable[str] = ("filter", "nat", "mangle")) -> str:
        """Normalized routing + firewall state of the host ns, for byte-identical before/after comparisons.

        ``ip -4 rule`` as is; ``ip -4 route show table all`` sorted, without kernel-volatile bits
        (expires/age, cache entries); ``iptables-save`` per table with counters and comments stripped, chains
        and their rules sorted by chain name (rule order within a chain kept), a table holding nothing but
        empty ACCEPT built-in chains shown as empty; ``ip -br link`` and ``ip -4 -br addr`` sorted, spaces
        squeezed.

        A removed endpoint's veth is deleted by the plugin right after its response (retired with
        the alias ``multinic:gone:<id>``, ~20 ms): the dump first waits until none is left, as a
        user looking a moment after ``docker rm`` would see the host.
        """
        deadline = time.monotonic() + 10
        while "alias multinic:gone:" in self.host("ip", "-o", "link").stdout and time.monotonic() < deadline:
            time.sleep(0.05)
        out = ["## ip -4 rule", self.host("ip", "-4", "rule").stdout.rstrip()]
        routes = []
        for line in self.host("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
            if not line.strip() or line.startswith(("cache", " ")):
                continue
            line = re.sub(r"\s+(expires|age)\s+\S+", "", line)
            routes.append(" ".join(line.split()))
        out += ["## ip -4 route show table all", *sorted(routes)]
        for table in tables:
            out += [f"## iptables-save -t {table}", *self._iptables_table(table)]
        links = sorted(" ".join(ln.split()) for ln in self.host("ip", "-br", "link").stdout.splitlines() if ln.strip())
        addrs = sorted(
            " ".join(ln.split()) for ln in self.host("ip", "-4", "-br", "addr").stdout.splitlines() if ln.strip()
        )
        out += ["## ip -br link", *links, "## ip -4 -br addr", *addrs]
        return "\n".join(out) + "\n"

    def _iptables_table(self, table: str) -> list[str]:
        proc = self.host(self.iptables_save, "-t", table, check=False)
        policies: dict[str, str] = {}
        rules: dict[str, list[str]] = {}
        for line in proc.stdout.splitlines():
            line = line.strip()
            if line.startswith(":"):
                chain, policy = line[1:].split()[:2]
                policies[chain] = policy
                rules.setdefault(chain, [])
            elif line.startswith("-A "):
                chain = line.split()[1]
                rules.setdefault(chain, []).append(re.sub(r"^\[\d+:\d+\]\s*", "", line))
            elif line.startswith("[") and " -A " in line:  # iptables-save -c style
                rule = re.sub(r"^\[\d+:\d+\]\s*", "", line)
                rules.setdefault(rule.split()[1], []).append(rule)
        builtin = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
        if all(c in builtin and policies.get(c, "ACCEPT") == "ACCEPT" and not r for c, r in rules.items()):
            return ["(empty)"]
        lines = []
        for chain in sorted(rules):
            lines.append(f":{chain} {policies.get(chain, '-')}")
        for chain in sorted(rules):
            lines.extend(rules[chain])
        return lines

    # ------------------------------------------------------------------ teardown
    def down(self, release: bool = True) -> None:
        """Remove plugin, background servers, dockerd (and its containers), namespaces, socket, work dir.

        Safe after a partial setup, after a crash (same name) and when called twice. Raises LabError at
        the end if something could not be removed (after trying everything). If ``MULTINIC_LAB_LOGS`` names
        a directory, the lab's logs are copied to ``$MULTINIC_LAB_LOGS/<name>/`` first (CI artifacts).
        """
        # Another live process holding this lab name owns those namespaces: touch nothing.
        self._lock_name()
        errors: list[str] = []

        def step(what: str, func: Any, *args: Any) -> None:
            try:
                func(*args)
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append(f"{what}: {exc}")

        step("stop plugin", self.stop_plugin)
        step("stop background servers", self.stop_background)
        step("stop dockerd", self.stop_dockerd)
        step("save logs", self._save_logs)
        step("processes in lab namespaces", self._kill_ns_processes)
        step("unmount", self._unmount_all)
        for ns in self.namespaces:
            if Path(NETNS_DIR, ns).exists():
                proc = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
                if proc.returncode != 0:
                    errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
        step("cgroups", self._remove_cgroups)
        step("plugin socket", self._remove_plugin_socket)
        step("docker socket in /run", self.run_docker_sock.unlink, True)
        self._unlock_driver()
        if self.dir.exists():
            step("work dir", shutil.rmtree, self.dir)
        if release and self._name_lock is not None:
            os.close(self._name_lock)
            self._name_lock = None
        if errors:
            raise LabError(f"{self!r}.down() left things behind:\n" + "\n".join(errors))

    def _save_logs(self) -> None:
        dest = os.environ.get("MULTINIC_LAB_LOGS")
        if not dest or not self.dir.exists():
            return
        target = Path(dest) / self.name
        target.mkdir(parents=True, exist_ok=True)
        for log in self.dir.glob("*.log"):
            shutil.copy2(log, target / log.name)

    def _remove_plugin_socket(self) -> None:
        """Remove the socket if this lab ran the plugin, or if it is stale (nobody listening, no lab holds it)."""
        if not os.path.exists(self.plugin_socket):
            return
        if not self._plugin_started:
            if self._connectable(self.plugin_socket):
                return  # someone else's live plugin
            try:
                self._lock_driver()
            except LabError:
                return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.plugin_socket)
        self._plugin_started = False

    def _kill_ns_processes(self) -> None:
        """Whatever still runs inside one of this lab's namespaces (a crashed run's servers) was started by a lab
        of this name: SIGTERM, then SIGKILL."""
        inodes = set()
        for ns in self.namespaces:
            with contextlib.suppress(OSError):
                inodes.add(f"net:[{os.stat(Path(NETNS_DIR, ns)).st_ino}]")
        if not inodes:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = []
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) != os.getpid():
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{entry}/ns/net") in inodes and _pid_alive(int(entry)):
                            pids.append(int(entry))
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            for pid in pids:
                _wait_pid_gone(pid, 5)

    def _unmount_all(self) -> None:
        """Unmount whatever dockerd/containerd left mounted under the work dir (deepest first)."""
        prefix = str(self.dir) + "/"
        mounts = []
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                mnt = line.split()[4].replace("\\040", " ")
                if mnt.startswith(prefix) or mnt == str(self.dir):
                    mounts.append(mnt)
        for mnt in sorted(set(mounts), key=len, reverse=True):
            subprocess.run(["umount", "-l", mnt], capture_output=True)

    def _remove_cgroups(self) -> None:
        base = Path("/sys/fs/cgroup")
        candidates = [base / self.cgroup_parent] + [p / self.cgroup_parent for p in base.iterdir() if p.is_dir()]
        for top in candidates:
            if not top.is_dir():
                continue
            for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    def leftovers(self) -> list[str]:
        """What of this lab still exists (empty after a clean ``down()``)."""
        found = [f"netns {n}" for n in self.namespaces if Path(NETNS_DIR, n).exists()]
        if Path(self.plugin_socket).exists() and self._plugin_started:
            found.append(f"socket {self.plugin_socket}")
        found += [f"pid {p}" for p in _pids_mentioning(str(self.dir))]
        if self.dir.exists():
            found.append(f"dir {self.dir}")
        return found
