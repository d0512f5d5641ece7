"""The background loops: threads of one process forked beside gunicorn (:func:`run_loops`), tied to
``multinic serve``'s life, restarted by the :class:`Supervisor` when a loop dies or hangs (a plain fork,
not multiprocessing: nothing shared a forked grandchild or a gunicorn worker could set)."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Callable

from ..ops import health

STOP_POLL = 0.5  # the longest a loop goes without looking at its stop flag


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


# Signals gunicorn's arbiter handles in the master; a helper forked from it must not inherit them.
_ARBITER_SIGNALS = ("SIGCHLD", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGTTIN", "SIGTTOU", "SIGWINCH")


def _child(name: str, target: Callable[[StopFlag], None]) -> None:
    """SIGTERM/SIGINT stop the helper; processes it forks get the default handlers back."""
    me = os.getpid()
    stop: Any = StopFlag()
    for signame in _ARBITER_SIGNALS:
        signal.signal(getattr(signal, signame), signal.SIG_DFL)

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
    except LoopDied:
        raise  # the process exits with status 1
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


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


class LoopDied(Exception):
    """A loop's thread ended while its process was not stopping."""


def run_loops(loops: dict[str, Callable[[Any], None]], state_dir: str, stop: StopFlag,
              faults: Any = None) -> None:
    """The loops process: each loop in a thread of its own with its own heartbeat (``<loop>.json``), one
    thread flushing the heartbeats. A loop whose thread ends (an uncaught error) ends the process, which
    the :class:`Supervisor` restarts, so a loop is restarted, reported and backed off the same way whether
    its thread died, it hung, or the process was killed."""
    import threading

    flags = {key: health.start_beat(state_dir, key, threading.Event(), faults) for key in loops}
    threads = {}
    for key, target in loops.items():
        threads[key] = threading.Thread(target=_run_loop, args=(key, target, flags[key]), name=f"multinic-{key}",
                                        daemon=True)
        threads[key].start()
    try:
        while not stop.wait(STOP_POLL):
            dead = [key for key, thread in threads.items() if not thread.is_alive()]
            if dead:
                raise LoopDied(f"{', '.join(dead)} ended")
    finally:
        for flag in flags.values():
            flag.set()
        deadline = time.monotonic() + 5
        for thread in threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        health.stop_beats()


def _run_loop(key: str, target: Callable[[Any], None], stop: Any) -> None:
    health.bind(stop)
    try:
        target(stop)
    except BaseException as exc:  # noqa: BLE001 - reported; the process ends and is restarted
        logging.getLogger(__name__).exception("%s crashed", key)
        health.crashed(key, exc)


class Supervisor:
    """Keeps the loops process running, like systemd's ``Restart=always`` + ``WatchdogSec``: when it
    died (killed, or one of its loop threads ended) it is restarted; when one of its loops' heartbeats is
    older than twice the health staleness it is killed and restarted (a hung thread cannot be killed
    alone, and may hold the state lock). Restarts back off (1 s doubling to 30 s) while it keeps dying
    within a minute of its start. Runs as a thread in ``multinic serve``'s process (gunicorn's arbiter,
    which reaps any child it sees exit: the loops, which run iptables and conntrack tools, have a process
    of their own); each loop's record goes to ``health/supervisor.json``.
    """

    CHECK = STOP_POLL
    BACKOFF_MAX = 30.0

    def __init__(self, state_dir: str, loops: dict[str, Callable[[Any], None]],
                 stale: float = health.STALE_AFTER, faults: Any = None) -> None:
        self.health = health
        self.stale = stale
        self.path = health.health_dir(state_dir) / "supervisor.json"
        self.state_dir = state_dir
        self.loops = loops
        self.faults = faults
        self.proc = BackgroundProcess(0, "loops")
        self.record: dict[str, dict[str, Any]] = {}
        self.started = 0.0
        self.next_start = 0.0
        self.backoff = 0.0
        self._stop = StopFlag()
        self._thread: Any = None

    def _write(self) -> None:
        try:
            self.health.write(self.path, {"pid": os.getpid(), "loops": self.record})
        except OSError as exc:
            logging.getLogger(__name__).warning("cannot write %s: %s", self.path, exc)

    def _start(self) -> None:
        self.proc = spawn("loops (" + ", ".join(self.loops) + ")",
                          lambda stop: run_loops(self.loops, self.state_dir, stop, self.faults))
        self.started = time.time()
        for key in self.loops:
            rec = self.record.setdefault(key, {"restarts": 0, "last_exit": None, "last_restart": None})
            rec.update(pid=self.proc.pid, started=self.started)

    def start(self) -> None:
        import threading

        self._start()
        self._write()
        self._thread = threading.Thread(target=self._run, name="multinic-supervisor", daemon=True)
        self._thread.start()

    def _exit_status(self) -> str | None:
        """None while running; how it ended once it has (``dead`` if someone else reaped it)."""
        try:
            done, status = os.waitpid(self.proc.pid, os.WNOHANG)
        except ChildProcessError:  # gunicorn's arbiter reaps every child it sees exit
            return "exited (reaped by gunicorn, status unknown)"
        return describe_exit(status) if done else None

    def _hung(self, now: float) -> tuple[str, float] | None:
        """The first loop whose heartbeat is older than twice the staleness, and how old."""
        for key in self.loops:
            beat = self.health.read(self.health.health_dir(self.state_dir) / f"{key}.json")
            last = beat.get("last_run") if beat.get("pid") == self.proc.pid else None
            since = now - (last if isinstance(last, (int, float)) else self.started)
            if since > 2 * self.stale:
                return key, since
        return None

    def check_once(self) -> None:
        log = logging.getLogger(__name__)
        now = time.time()
        if self.proc.pid == 0:  # waiting out a backoff
            if time.monotonic() >= self.next_start:
                self._start()
                self._write()
            return
        ended = self._exit_status()
        culprit = None
        if ended is None:
            hung = self._hung(now)
            if hung is None:
                return
            culprit, since = hung
            log.error("%s (pid %s) showed no sign of life for %.0f s; killing its process", culprit, self.proc.pid,
                      since)
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            ended = f"hung for {since:.0f} s, killed"
            try:
                os.waitpid(self.proc.pid, 0)
            except ChildProcessError:
                pass
        if now - self.started > 60:
            self.backoff = 0.0  # it ran for a while: restart at once
        delay = self.backoff
        self.backoff = min(max(1.0, delay * 2), self.BACKOFF_MAX)
        crashed = {key: beat["crashed"] for key in self.loops
                   if isinstance((beat := self.health.read(self.health.health_dir(self.state_dir) / f"{key}.json"
                                                           )).get("crashed"), str) and beat.get("pid") == self.proc.pid}
        log.error("loops process (pid %s) %s%s; restarting it%s", self.proc.pid, ended,
                  "".join(f"; {k}: {v}" for k, v in crashed.items()), f" in {delay:.0f} s" if delay else "")
        for key in self.loops:
            rec = self.record[key]
            exit_text = (f"thread died: {crashed[key]}" if key in crashed
                         else ended if culprit in (None, key) and not crashed
                         else f"restarted with {culprit or ', '.join(crashed)} ({ended})")
            rec.update(restarts=rec["restarts"] + 1, last_exit=exit_text, last_restart=now, pid=None)
        self.proc = BackgroundProcess(0, "loops")
        self.next_start = time.monotonic() + delay
        self._write()

    def _run(self) -> None:
        while not self._stop.wait(self.CHECK):
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the supervisor must not die of one bad round
                logging.getLogger(__name__).exception("supervisor round failed")

    def stop(self) -> None:
        """In the serving process: stop supervising, then stop the loops (a no-op in gunicorn workers)."""
        import threading

        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=5)
        if self.proc.pid:  # 0: a placeholder waiting out a backoff (os.kill(0) would hit the group)
            self.proc.stop()
