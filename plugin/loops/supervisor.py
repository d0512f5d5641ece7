"""The background loops' processes: forked beside gunicorn, tied to ``multinic serve``'s life, restarted
by the :class:`Supervisor` when they die or hang (a plain fork, not multiprocessing: nothing shared a
forked grandchild or a gunicorn worker could set)."""

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


def _child(name: str, target: Callable[[StopFlag], None], state_dir: str | None) -> None:
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
    if state_dir:
        stop = health.start_beat(state_dir, name, stop)
    try:
        target(stop)
    except Exception:  # noqa: BLE001
        logging.getLogger(__name__).exception("%s crashed", name)


def spawn(name: str, target: Callable[[StopFlag], None], state_dir: str | None = None) -> BackgroundProcess:
    """Fork ``target(stop_flag)`` into its own process, tied to this one's life; with ``state_dir`` it
    beats in the health files there."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _die_with_parent()
            if os.getppid() == parent:  # else the parent died before prctl took effect
                _child(name, target, state_dir)
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


class Supervisor:
    """Keeps the helper loops running, like systemd's ``Restart=always`` + ``WatchdogSec``: a loop
    whose process died is restarted, one whose heartbeat is older than twice the health
    staleness is killed and restarted. Restarts back off (1 s doubling to 30 s) while a loop keeps
    dying within a minute of its start. Runs as a thread in ``multinic serve``'s process (the
    helpers' parent, which gunicorn's arbiter also is); state goes to ``health/supervisor.json``.
    """

    CHECK = STOP_POLL
    BACKOFF_MAX = 30.0

    def __init__(self, state_dir: str, spawners: dict[str, Callable[[], BackgroundProcess]],
                 stale: float = health.STALE_AFTER) -> None:
        self.health = health
        self.stale = stale
        self.path = health.health_dir(state_dir) / "supervisor.json"
        self.state_dir = state_dir
        self.spawners = spawners
        self.procs: dict[str, BackgroundProcess] = {}
        self.record: dict[str, dict[str, Any]] = {}
        self.next_start: dict[str, float] = {}
        self.backoff: dict[str, float] = {}
        self._stop = StopFlag()
        self._thread: Any = None

    def _write(self) -> None:
        try:
            self.health.write(self.path, {"pid": os.getpid(), "loops": self.record})
        except OSError as exc:
            logging.getLogger(__name__).warning("cannot write %s: %s", self.path, exc)

    def _start(self, key: str) -> None:
        proc = self.spawners[key]()
        self.procs[key] = proc
        rec = self.record.setdefault(key, {"restarts": 0, "last_exit": None, "last_restart": None})
        rec.update(pid=proc.pid, started=time.time())

    def start(self) -> None:
        import threading

        for key in self.spawners:
            self._start(key)
        self._write()
        self._thread = threading.Thread(target=self._run, name="multinic-supervisor", daemon=True)
        self._thread.start()

    def _exit_status(self, proc: BackgroundProcess) -> str | None:
        """None while running; how it ended once it has (``dead`` if someone else reaped it)."""
        try:
            done, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:  # gunicorn's arbiter reaps every child it sees exit
            return "exited (reaped by gunicorn, status unknown)"
        return describe_exit(status) if done else None

    def check_once(self) -> None:
        log = logging.getLogger(__name__)
        now = time.time()
        changed = False
        for key, proc in list(self.procs.items()):
            rec = self.record[key]
            if proc.pid == 0:  # waiting out a backoff
                if time.monotonic() >= self.next_start.get(key, 0):
                    self._start(key)
                    changed = True
                continue
            ended = self._exit_status(proc)
            if ended is None:
                beat = self.health.read(self.health.health_dir(self.state_dir) / f"{key}.json")
                last = beat.get("last_run") if beat.get("pid") == proc.pid else None
                since = now - (last if isinstance(last, (int, float)) else rec.get("started", now))
                if since > 2 * self.stale:
                    log.error("%s (pid %s) showed no sign of life for %.0f s; killing it", key, proc.pid, since)
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    ended = f"hung for {since:.0f} s, killed"
                    try:
                        os.waitpid(proc.pid, 0)
                    except ChildProcessError:
                        pass
                else:
                    continue
            if now - rec.get("started", now) > 60:
                self.backoff[key] = 0.0  # it ran for a while: restart at once
            delay = self.backoff.get(key, 0.0)
            self.backoff[key] = min(max(1.0, delay * 2), self.BACKOFF_MAX)
            log.error("%s (pid %s) %s; restarting it%s", key, proc.pid, ended,
                      f" in {delay:.0f} s" if delay else "")
            rec.update(restarts=rec["restarts"] + 1, last_exit=ended, last_restart=now, pid=None)
            self.procs[key] = BackgroundProcess(0, key)
            self.next_start[key] = time.monotonic() + delay
            changed = True
        if changed:
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
        for proc in self.procs.values():
            if proc.pid:  # 0: a placeholder waiting out a backoff (os.kill(0) would hit the group)
                proc.stop()
