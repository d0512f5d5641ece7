"""The plugin as the host service runs it (``multinic serve``, a legacy plugin on a socket in the
lab host's /run/docker/plugins), started from this checkout."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

from .dockerd import tail
from .topology import LabError, clean_env

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = "/run/docker/plugins"  # inside the lab's host, where dockerd looks for legacy plugins


def connectable(path: str | Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def stop_group(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM a process group, wait, SIGKILL it; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # workers of a dead master
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


class PluginProcess:
    """Mixin of :class:`tests.lab.Lab`: ``multinic serve`` in the lab's host."""

    dir: Path
    host_ns: str

    def init_plugin(self, driver: str) -> None:
        self.driver = driver
        self.plugin_socket = f"{PLUGIN_DIR}/{driver}.sock"  # as the lab's host (and dockerd) sees it
        self.plugin_socket_host = self.host_path(self.plugin_socket)  # type: ignore[attr-defined]
        self.plugin_log = self.dir / "plugin.log"
        self.state_dir = self.dir / "state"
        self.plugin_root = REPO_ROOT  # cwd and first PYTHONPATH entry of the plugin process
        # interpreter of the plugin: needs the plugin's dependencies (gunicorn, pyroute2, ...)
        self.plugin_python = os.environ.get("MULTINIC_LAB_PYTHON") or sys.executable
        self._plugin: subprocess.Popen[bytes] | None = None

    def plugin_env(self, extra: dict[str, str] | None = None, own_state: bool = True) -> dict[str, str]:
        """What a ``multinic`` command of this lab runs with: its state (unless not ``own_state``: then
        the defaults of a real host, inside the lab's /var/lib), its dockerd, this checkout."""
        env = clean_env({
            **({"MULTINIC_STATE_DIR": str(self.state_dir)} if own_state else {}),
            "DOCKER_HOST": "unix:///run/docker.sock",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(self.plugin_root), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra or {})
        return self.with_iptables_flavour(env)  # type: ignore[attr-defined]

    def multinic(self, *args: str, env: dict[str, str] | None = None, own_state: bool = True,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``multinic ARGS`` in the lab's host, against its state (see :meth:`plugin_env`) and dockerd."""
        cmd = [*self.nsenter(self.host_ns), self.plugin_python, "-m", self.plugin_module, *args]  # type: ignore[attr-defined]
        return subprocess.run(cmd, capture_output=True, text=True, env=self.plugin_env(env, own_state),
                              timeout=timeout, cwd=str(self.plugin_root))

    @property
    def plugin_module(self) -> str:
        """``python -m`` what runs ``multinic`` (a checkout from before plugin/__main__.py: plugin.cli)."""
        return "plugin.cli" if (self.plugin_root / "plugin" / "cli.py").exists() else "plugin"

    def plugin_running(self) -> bool:
        return self._plugin is not None and self._plugin.poll() is None

    @property
    def plugin_pid(self) -> int | None:
        """The running plugin's pid, also its process group's id (the arbiter and the worker hosting the
        loops); None when the lab started none."""
        return self._plugin.pid if self._plugin is not None else None

    def plugin_exit_code(self) -> int | None:
        """Exit code of a plugin that died on its own (not through stop_plugin), else None."""
        return self._plugin.poll() if self._plugin is not None else None

    def plugin_log_tail(self, lines: int = 40) -> str:
        return tail(self.plugin_log, lines)

    def start_plugin(self, env: dict[str, str] | None = None, timeout: float = 20,
                     args: Iterable[str] = ()) -> subprocess.Popen[bytes]:
        """``multinic serve --socket <plugin_socket>`` in the lab's host; waits until the socket accepts."""
        if self.plugin_running():
            raise LabError("plugin already running; stop_plugin() first")
        self.plugin_socket_host.parent.mkdir(parents=True, exist_ok=True)
        self.plugin_socket_host.unlink(missing_ok=True)  # stale: we must see the new one appear
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [*self.nsenter(self.host_ns), self.plugin_python, "-m", self.plugin_module, "serve",  # type: ignore[attr-defined]
               "--socket", self.plugin_socket, *args]
        with open(self.plugin_log, "ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            self._plugin = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.plugin_env(env), cwd=str(self.plugin_root),
                                            start_new_session=True)
        t0 = time.monotonic()
        while not connectable(self.plugin_socket_host):
            if self._plugin.poll() is not None:
                rc, self._plugin = self._plugin.returncode, None
                text = tail(self.plugin_log)
                hint = ""
                if "ModuleNotFoundError" in text:
                    hint = (f"\n(hint: {self.plugin_python} lacks the plugin's dependencies: run the tests with "
                            "the interpreter the plugin is installed in, or set MULTINIC_LAB_PYTHON to it)")
                raise LabError(f"plugin exited with {rc} before listening:\n{text}{hint}")
            if time.monotonic() - t0 > timeout:
                self.stop_plugin()
                raise LabError(f"plugin socket {self.plugin_socket} did not appear in {timeout}s:\n"
                               f"{tail(self.plugin_log)}")
            time.sleep(0.05)
        self.timings["start_plugin"] = time.monotonic() - t0  # type: ignore[attr-defined]
        return self._plugin

    def stop_plugin(self, timeout: float = 15) -> int | None:
        """SIGTERM the plugin's process group, wait, then SIGKILL; its exit code (None if not running)."""
        proc, self._plugin = self._plugin, None
        return None if proc is None else stop_group(proc, timeout)

    def kill_plugin(self) -> None:
        """SIGKILL the plugin's whole process group at once, as a crash would: nothing of it cleans up."""
        if self._plugin is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._plugin.pid, signal.SIGKILL)
            self._plugin.wait()
        self.stop_plugin()
