"""The lab's dockerd: the engine of the lab (20.10 or 28.5, unpacked under /opt/multinic-lab by
scripts/install-lab-tools.sh), started inside the lab's host, and the docker CLI pointed at it."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any, Iterable

from . import engine29
from .topology import LAB_TOOLS, TOOLS_PATH, LabError, clean_env, fail, pid_alive, wait_pid_gone

ENGINES = {  # engine -> directories put first on PATH for dockerd (containerd, shims, docker-proxy, runc)
    e: [str(LAB_TOOLS / f"engine-{e}/root/usr/bin"), str(LAB_TOOLS / f"engine-{e}/root/usr/sbin"), *TOOLS_PATH]
    for e in ("20.10", "28.5")
}
DOCKERD = {e: str(LAB_TOOLS / f"engine-{e}/root/usr/sbin/dockerd") for e in ENGINES}
DOCKER_CLI = str(LAB_TOOLS / "engine-28.5/root/usr/bin/docker")  # talks to both engines
COMPOSE = str(LAB_TOOLS / "engine-28.5/root/usr/libexec/docker/cli-plugins/docker-compose")
RUNC = str(LAB_TOOLS / "tools/root/usr/sbin/runc")
IMAGE = "mn-busybox:latest"
BUSYBOX = "/bin/busybox"


def busybox_rootfs() -> bytes:
    """A rootfs tar: /bin/busybox (static) + a symlink per applet, /www, /tmp, /etc/{passwd,group}."""
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(path: str, kind: bytes = tarfile.DIRTYPE, mode: int = 0o755, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime, info.linkname, info.size = kind, mode, now, link, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "www", "proc", "sys", "dev", "var",
                  "var/run", "run"):
            add(d)
        add("tmp", mode=0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, Path(BUSYBOX).read_bytes())
        for applet in applets:
            if applet != "busybox":
                add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        add("etc/passwd", tarfile.REGTYPE, 0o644, passwd)
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        add("www/index.html", tarfile.REGTYPE, 0o644, b"multinic-lab\n")
    return buf.getvalue()


class Dockerd:
    """Mixin of :class:`tests.lab.Lab`: the lab's dockerd (needs the topology's host and directory)."""

    engine: str
    iptables: str
    dir: Path
    host_ns: str

    def init_dockerd(self, engine: str, iptables: str, docker_firewall: str = "iptables") -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {engine!r}")
        if iptables not in ("nft", "legacy"):
            raise ValueError(f"iptables must be 'nft' or 'legacy', got {iptables!r}")
        if docker_firewall not in ("iptables", "nftables") or (docker_firewall == "nftables" and engine != "28.5"):
            raise ValueError(f"docker_firewall must be 'iptables', or 'nftables' with engine 28.5 (Engine 29's "
                             f"nftables backend simulated), got {docker_firewall!r} with {engine}")
        self.engine = engine
        self.iptables = iptables  # the flavour the host's `iptables` is (dockerd and the plugin see it)
        # "nftables": Engine 29's nftables backend, simulated (tests/lab/engine29.py); no iptables on PATH
        self.docker_firewall = docker_firewall
        self.iptables_save = "iptables-save" if iptables == "nft" else "iptables-legacy-save"
        # Inside the lab's host: dockerd listens on the usual /run/docker.sock (a managed plugin sees it
        # as /host/run/docker.sock, its default); from the machine, that is <dir>/run/docker.sock.
        self.docker_sock = self.host_path("/run/docker.sock")  # type: ignore[attr-defined]
        self.docker_host = f"unix://{self.docker_sock}"
        self.data_root = self.dir / "data"
        self.exec_root = self.dir / "exec"
        self.pidfile = self.dir / "dockerd.pid"
        self.dockerd_log = self.dir / "dockerd.log"
        self.cgroup_parent = f"multinic-lab-{self.name}"  # type: ignore[attr-defined]
        self.docker_bin = DOCKER_CLI
        self.server_version = ""
        self._dockerd: subprocess.Popen[bytes] | None = None

    @staticmethod
    def cli() -> str:
        return DOCKER_CLI

    # -- the CLI ---------------------------------------------------------------------------------------
    def docker(
        self, *args: str, check: bool = True, timeout: float | None = 120, input: str | bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this lab's dockerd (DOCKER_HOST set, private DOCKER_CONFIG)."""
        cmd = [self.docker_bin, *map(str, args)]
        env = clean_env({"DOCKER_HOST": self.docker_host, "DOCKER_CONFIG": str(self.dir / "cli")})
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input, env=env)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"docker {' '.join(map(str, args))}: timed out after {timeout}s "
                           f"(dockerd log tail:\n{tail(self.dockerd_log, 15)})") from exc
        if check and proc.returncode != 0:
            raise fail(["docker", *args], proc)
        return proc

    def container_exec(self, name: str, *cmd: str, check: bool = True,
                       timeout: float | None = 60) -> subprocess.CompletedProcess[str]:
        return self.docker("exec", name, *cmd, check=check, timeout=timeout)

    def container_pid(self, name: str) -> int:
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())

    def inspect(self, obj: str) -> Any:
        """``docker inspect`` parsed (first element)."""
        return json.loads(self.docker("inspect", obj).stdout)[0]

    # -- the daemon ------------------------------------------------------------------------------------
    def with_iptables_flavour(self, env: dict[str, str]) -> dict[str, str]:
        """A legacy-iptables host: ``iptables*`` on PATH are the legacy tools (as after
        ``update-alternatives --set iptables iptables-legacy``), for dockerd and the plugin alike. Engine 29's
        nftables mode: no iptables on PATH at all."""
        if self.docker_firewall == "nftables":
            env["PATH"] = engine29.path_without_iptables(self.dir / "no-iptables-bin",
                                                         env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
            return env
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
        """Start dockerd in the lab's host, wait for ``docker version``, import ``mn-busybox:latest``."""
        if self.dockerd_running():
            return
        t0 = time.monotonic()
        env = clean_env()
        env["PATH"] = os.pathsep.join([*ENGINES[self.engine], env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
        env = self.with_iptables_flavour(env)
        dockerd = DOCKERD[self.engine]
        if not os.access(dockerd, os.X_OK):
            raise LabError(f"dockerd {self.engine} not found at {dockerd} (run scripts/install-lab-tools.sh)")
        for d in (self.data_root, self.exec_root, self.dir / "cli"):
            d.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {}
        if self.engine == "20.10":
            config["deprecated-key-path"] = str(self.dir / "key.json")  # else it writes /etc/docker/key.json
        config_file = self.dir / "daemon.json"
        config_file.write_text(json.dumps(config))
        cmd = [*self.nsenter(self.host_ns), dockerd, "--data-root", str(self.data_root),  # type: ignore[attr-defined]
               "--exec-root", str(self.exec_root), "-H", "unix:///run/docker.sock", "--pidfile", str(self.pidfile),
               "--config-file", str(config_file), "--cgroup-parent", f"/{self.cgroup_parent}",
               *(engine29.DOCKERD_ARGS if self.docker_firewall == "nftables" else ()), *extra_args]
        with open(self.dockerd_log, "ab") as log:
            self._dockerd = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._dockerd.poll() is not None:
                rc, self._dockerd = self._dockerd.returncode, None
                raise LabError(f"dockerd ({self.engine}) exited with {rc}:\n{tail(self.dockerd_log)}")
            if self.docker_sock.exists():
                try:  # the socket answers before dockerd has restored its plugins and containers (a managed
                    # plugin holds its API until the plugin listens)
                    probe = self.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=10)
                except LabError:
                    probe = subprocess.CompletedProcess([], 1)
                if probe.returncode == 0:
                    self.server_version = probe.stdout.strip()
                    if not self.server_version.startswith(self.engine + "."):
                        self.stop_dockerd()
                        raise LabError(f"asked for engine {self.engine}, {dockerd} is {self.server_version}")
                    break
            if time.monotonic() > deadline:
                self.stop_dockerd()
                raise LabError(f"dockerd ({self.engine}) did not answer in {timeout}s:\n{tail(self.dockerd_log)}")
            time.sleep(0.2)
        self.timings["dockerd_ready"] = time.monotonic() - t0  # type: ignore[attr-defined]
        if self.docker_firewall == "nftables":
            self.write_engine29_ruleset()
        if self.docker("image", "inspect", IMAGE, check=False).returncode != 0:
            tar_path = self.dir / "busybox-rootfs.tar"
            tar_path.write_bytes(busybox_rootfs())
            self.docker("import", "-c", "ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin", "-c", 'CMD ["/bin/sh"]',
                        str(tar_path), IMAGE, timeout=120)
        self.timings["start_dockerd"] = time.monotonic() - t0  # type: ignore[attr-defined]

    def write_engine29_ruleset(self) -> None:
        """What Engine 29's nftables backend writes at daemon start (tests/lab/engine29.py), for docker0 as
        dockerd made it."""
        subnets = {}
        for family in (4, 6):
            out = self.run(self.host_ns, "ip", f"-{family}", "-o", "addr", "show", "dev", "docker0",  # type: ignore[attr-defined]
                           "scope", "global", check=False).stdout.split()
            word = "inet6" if family == 6 else "inet"
            cidr = out[out.index(word) + 1] if word in out else None
            subnets[family] = str(ipaddress.ip_interface(cidr).network) if cidr else None
        text = engine29.ruleset(subnets[4] or "172.17.0.0/16", 4) + engine29.ruleset(subnets[6], 6)
        self.run(self.host_ns, "nft", "-f", "-", input=text)  # type: ignore[attr-defined]

    def dockerd_running(self) -> bool:
        return self._dockerd is not None and self._dockerd.poll() is None

    @property
    def dockerd_pid(self) -> int | None:
        """The lab's dockerd's pid (its process group's id); None when the lab started none."""
        return self._dockerd.pid if self._dockerd is not None else None

    def kill_dockerd(self) -> None:
        """SIGKILL dockerd alone, as a crash would: its containerd and the containers stay."""
        if self._dockerd is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._dockerd.pid, signal.SIGKILL)
            self._dockerd.wait()
            self._dockerd = None

    def stop_dockerd(self, timeout: float = 30, remove_containers: bool = True) -> None:
        """``docker rm -f`` every container (unless ``remove_containers`` is false: a restart keeps them),
        then SIGTERM dockerd, wait, SIGKILL its process group; containers of a crashed run go too."""
        pid = self._dockerd.pid if self._dockerd is not None else None
        if remove_containers and pid is not None and pid_alive(pid) and self.docker_sock.exists():
            ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=60)
        if pid is not None and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not wait_pid_gone(pid, timeout):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                wait_pid_gone(pid, 10)
        if self._dockerd is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._dockerd.wait(timeout=5)
            self._dockerd = None
        self.remove_containers_of_a_crash()

    def remove_containers_of_a_crash(self) -> None:
        """Containers still running without their dockerd (a crash): ``runc delete --force`` each."""
        roots = list(self.exec_root.glob("runtime-runc/*")) if self.exec_root.exists() else []
        for root in roots:
            ids = subprocess.run([RUNC, "--root", str(root), "list", "-q"], capture_output=True, text=True)
            for cid in ids.stdout.split():
                subprocess.run([RUNC, "--root", str(root), "delete", "--force", cid], capture_output=True)

    def remove_cgroups(self) -> None:
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


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path})"
    return "\n".join(text.splitlines()[-lines:])
