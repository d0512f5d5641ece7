"""Run test code inside a throw-away network namespace (never the machine's own).

``with scratch_netns("mnt-x") as ns: in_netns(ns, func, *args)`` forks, enters the namespace
with setns(2) in the child, runs ``func`` there and returns its result (or re-raises its
exception) in the parent. Namespaces are removed on exit, on failure too.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import subprocess
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name_or_path: str) -> None:
    path = name_or_path if name_or_path.startswith("/") else f"/var/run/netns/{name_or_path}"
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def in_netns(ns: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``func`` in a forked child that has entered ``ns``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            enter_netns(ns)
            payload = ("ok", func(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - shipped to the parent
            payload = ("err", (exc, traceback.format_exc()))
        try:
            data = pickle.dumps(payload)
        except Exception:  # noqa: BLE001
            data = pickle.dumps(("err", (RuntimeError(repr(payload)), "")))
        with os.fdopen(write_fd, "wb") as fh:
            fh.write(data)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    if status == "err":  # the child's own exception, so callers catch what they would catch in-process
        exc, tb = value
        exc.add_note(f"in netns {ns}:\n{tb}")
        raise exc
    return value


def sh(ns: str, cmd: str, check: bool = True) -> str:
    """Run a shell command inside ``ns`` (nsenter, so /sys stays as it is)."""
    proc = subprocess.run(
        ["nsenter", f"--net=/var/run/netns/{ns}", "sh", "-c", cmd], capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"[{ns}] {cmd}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@contextmanager
def scratch_netns(*names: str) -> Iterator[str | tuple[str, ...]]:
    """Create namespaces (lo up) and remove them afterwards, whatever happens."""
    created = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            subprocess.run(["ip", "netns", "add", name], check=True)
            created.append(name)
            sh(name, "ip link set lo up")
        yield names[0] if len(names) == 1 else names
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def serve_peer(ns: str, port: int) -> subprocess.Popen:
    """The lab's echo server (tests/lab/probes.py) in ``ns``; returns once it listens."""
    from tests.lab.probes import start_echo_server

    return start_echo_server(["nsenter", f"--net=/var/run/netns/{ns}"], port)


def connect(ns: str, addr: str, port: int, timeout: float = 3.0) -> str:
    """Connect from ``ns``; what the echo server sent (the address it saw), or ``FAIL``."""
    from tests.lab.probes import tcp_read

    got = tcp_read(["nsenter", f"--net=/var/run/netns/{ns}"], addr, port, timeout)
    return "FAIL" if got is None else got.strip()
