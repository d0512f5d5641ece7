"""Helper processes beside gunicorn (the gateway watcher, the healer): fork, stop, never leak.

A plain fork, not multiprocessing: no shared stop event a forked grandchild (pyroute2 forks to
open a socket in a netns) or a gunicorn worker could set, and no atexit hook joining the helper
from the workers. gunicorn forks its workers *after* the helpers, so they inherit the handles and
unwind through the same ``finally: stop()``; :meth:`BackgroundProcess.stop` is a no-op there.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Callable


class StopFlag:
    """A stop event a signal handler may set: no lock (``threading.Event.set`` in a handler can
    deadlock against the same thread's ``wait``; a multiprocessing Event is shared with forks)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._set and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return self._set


class BackgroundProcess:
    """Handle on a forked helper; :meth:`stop` only acts in the process that forked it."""

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.name = name
        self.owner = os.getpid()

    def alive(self) -> bool:
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped (gunicorn's master reaps every child it sees exit)
            return False
        return done == 0

    def stop(self, timeout: float = 5.0) -> None:
        if os.getpid() != self.owner:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not self.alive():
                    return
                time.sleep(0.05)


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: get SIGTERM when ``multinic serve`` exits, however it exits."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort
        pass


def _child(name: str, target: Callable[[StopFlag], None]) -> None:
    """SIGTERM/SIGINT stop the helper; processes it forks get the default handlers back."""
    me = os.getpid()
    stop = StopFlag()

    def on_signal(signum: int, frame: object) -> None:
        if os.getpid() == me:
            stop.set()
        else:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        target(stop)
    except Exception:  # noqa: BLE001
        logging.getLogger(__name__).exception("%s crashed", name)


def spawn(name: str, target: Callable[[StopFlag], None]) -> BackgroundProcess:
    """Fork ``target(stop_flag)`` into its own process, tied to this one's life."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _die_with_parent()
            if os.getppid() == parent:  # else the parent died before prctl took effect
                _child(name, target)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)
    logging.getLogger(__name__).info("%s started (pid %s)", name, pid)
    return BackgroundProcess(pid, name)
