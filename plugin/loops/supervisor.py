"""The background loops: threads hosted by one gunicorn worker at a time (:func:`host_loops`, a lock
decides which), watched from the arbiter by the :class:`Supervisor`, which has the hosting worker
replaced when a loop dies or hangs, with backoff, and records how each loop's last run ended."""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import threading
import time
import weakref
from typing import Any, Callable

from ..kernel import proc
from ..ops import health, memory
from ..settings import Settings

STOP_POLL = 0.5  # the longest a loop goes without looking at its stop flag
GIVE_BACK_EVERY = 4.0  # s: how often the hosting worker's freed heap is offered back


class StopFlag:
    """A stop event a signal handler may set: no lock (``threading.Event.set`` in a handler can
    deadlock against the same thread's ``wait``; a multiprocessing Event is shared with forks). A waiter
    sleeps on an eventfd that ``set`` or ``wake`` makes readable; each process has its own (one made before
    gunicorn forks is made again in each child), so setting it in a worker wakes nothing elsewhere."""

    def __init__(self) -> None:
        self._set = False
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        _flags.add(self)

    def _reopen(self) -> None:
        os.close(self._fd)
        self._fd = os.eventfd(1 if self._set else 0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def set(self) -> None:
        self._set = True
        self.wake()

    def wake(self) -> None:
        """End a wait early without stopping: the waiter looks around and waits again."""
        try:
            os.eventfd_write(self._fd, 1)
        except OSError:  # the counter is full: it is readable already
            pass

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        if not self._set:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            if poller.poll(max(0.0, timeout) * 1000) and not self._set:
                try:
                    os.eventfd_read(self._fd)  # a wake is taken once
                except BlockingIOError:
                    pass
        return self._set


_flags: weakref.WeakSet[StopFlag] = weakref.WeakSet()  # each made again in a forked child (one fork hook)
os.register_at_fork(after_in_child=lambda: [flag._reopen() for flag in list(_flags)])


class LoopDied(Exception):
    """A loop's thread ended while its process was not stopping."""


def run_loops(loops: dict[str, Callable[[Any], None]], state_dir: str, stop: StopFlag,
              faults: Any = None, started: Callable[[], None] = lambda: None,
              stale: float = Settings.health_stale) -> None:
    """Each loop in a thread of its own with its own heartbeat (``<loop>.json``), one thread flushing the
    heartbeats, until ``stop``; LoopDied when a loop's thread ends (an uncaught error)."""
    interval = health.beat_interval(stale)
    flags = {key: health.start_beat(state_dir, key, threading.Event(), faults, interval) for key in loops}
    threads, ended = {}, []

    def end(key: str) -> None:
        ended.append(key)
        stop.wake()

    for key, target in loops.items():
        threads[key] = threading.Thread(target=_run_loop, args=(key, target, flags[key], end),
                                        name=f"multinic-{key}", daemon=True)
        threads[key].start()
    started()
    try:
        while not stop.wait(GIVE_BACK_EVERY):  # a loop's thread that ends wakes this wait
            if ended:
                raise LoopDied(f"{', '.join(ended)} ended")
            memory.give_back(when_churned=True)  # this worker also answers the verbs: their garbage, returned
    finally:
        for flag in flags.values():
            flag.set()
        deadline = time.monotonic() + 5
        for thread in threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        health.stop_beats()


def name_thread(name: str) -> None:
    """The calling thread's name in the kernel (``top -H``, ``/proc/PID/task/TID/comm``); threads it starts
    inherit it."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except Exception:  # noqa: BLE001 - a name only
        pass


def _run_loop(key: str, target: Callable[[Any], None], stop: Any, ended: Callable[[str], None]) -> None:
    name_thread(f"mn-{key}")
    health.bind(stop)
    try:
        target(stop)
    except BaseException as exc:  # noqa: BLE001 - reported; its worker is replaced and the loop restarted
        logging.getLogger(__name__).exception("%s crashed", key)
        health.crashed(key, exc)
    finally:
        ended(key)


# -- in a gunicorn worker: hosting the loops -------------------------------------------------------
HOST_RECORD = "loops-host.json"  # {"pid", "started"}: the worker hosting the loops, written by it
_hosting = StopFlag()
_hosted: list[int] = []  # this worker's pid once it runs the loops
_settled = threading.Event()  # the loops beat here, or this worker waits for another to end


def host_loops(loops: dict[str, Callable[[Any], None]], state_dir: str, faults: Any = None,
               stale: float = Settings.health_stale) -> None:
    """In a gunicorn worker, once it is set up: a thread that waits for the loops' lock (a worker that
    hosts them holds it until it dies, when the kernel frees it) and then runs them here, after the
    backoff the supervisor asked for. A loop that dies stops this worker gracefully (the request in flight
    is answered first), and gunicorn starts another."""
    threading.Thread(target=_host, args=(loops, state_dir, faults, stale), name="multinic-loops",
                     daemon=True).start()
    _settled.wait(5.0)  # the first worker serves once the loops beat (one that waits for the lock does not wait)


def _host(loops: dict[str, Callable[[Any], None]], state_dir: str, faults: Any, stale: float) -> None:
    log = logging.getLogger(__name__)
    name_thread("mn-loops")  # and every thread the loops start: what runs beside the verbs
    try:
        if not _take_up(health.health_dir(state_dir)):
            return
    except Exception:  # noqa: BLE001 - the health directory cannot be written: another worker tries later
        log.exception("worker %s cannot take the loops up; it stops in 5 s and gunicorn starts another",
                      os.getpid())
        _settled.set()
        if not _hosting.wait(5.0):
            os.kill(os.getpid(), signal.SIGTERM)
        return
    log.info("loops (%s) running in worker %s", ", ".join(loops), os.getpid())
    try:
        run_loops(loops, state_dir, _hosting, faults, started=_settled.set, stale=stale)
    except LoopDied as exc:
        log.error("%s: stopping this worker, gunicorn starts another", exc)
        os.kill(os.getpid(), signal.SIGTERM)


def _take_up(hdir: Any) -> bool:
    """Wait for the loops' lock and the supervisor's word, then record this worker as their host; False
    when this worker stops first."""
    hdir.mkdir(parents=True, exist_ok=True)
    lock = os.open(hdir / "loops.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held for this worker's life; never closed
    except BlockingIOError:
        _settled.set()
        fcntl.flock(lock, fcntl.LOCK_EX)
    while not _may_start(hdir):
        _settled.set()
        if _hosting.wait(0.05):
            return False
    if _hosting.is_set():
        return False
    _hosted.append(os.getpid())
    health.write(hdir / HOST_RECORD, {"pid": os.getpid(), "started": time.time()})
    return True


def _may_start(hdir: Any) -> bool:
    """Once the supervisor has recorded how the last hosting worker ended, and its backoff is over."""
    last = health.read(hdir / HOST_RECORD).get("pid")
    if last in (None, os.getpid()):
        return True  # the first host of this ``multinic serve``
    record = health.read(hdir / "supervisor.json")
    not_before = record.get("not_before")
    return record.get("ended") == last and (not isinstance(not_before, (int, float)) or time.monotonic() >= not_before)


def stop_hosting(timeout: float = 5.0) -> None:
    """At a worker's exit: the loops it hosts stopped (their threads joined); a worker still waiting for
    the lock just stops waiting."""
    _hosting.set()
    for thread in threading.enumerate():
        if thread.name == "multinic-loops" and _hosted:
            thread.join(timeout)


# -- in gunicorn's arbiter: watching them -----------------------------------------------------------
class Supervisor:
    """Keeps the loops running, like systemd's ``Restart=always`` + ``WatchdogSec``, from a thread of
    ``multinic serve``'s process (gunicorn's arbiter). The loops are threads of the gunicorn worker that
    hosts them (:func:`host_loops`): when it ended (a loop died and it stopped itself, or it was killed)
    gunicorn starts another worker, which takes the loops up after the backoff written here
    (``not_before``: at once, then 1 s doubling to 30 s while they keep dying within a minute of their start); when one
    of its loops' heartbeats is older than twice the health staleness, the worker is stopped (a hung thread
    cannot be stopped alone, and may hold the state lock): SIGTERM, so the requests in flight are answered,
    and SIGKILL if it is still there after ``GRACE``. It looks every half heartbeat interval, and at once
    when gunicorn has reaped a worker (:meth:`wake`). Each loop's record (pid, restarts, how its last
    run ended) goes to ``health/supervisor.json``. Ages and backoffs are CLOCK_MONOTONIC's, one clock for
    every process of this boot that a step of the wall clock does not move.
    """

    BACKOFF_MAX = 30.0
    GRACE = 15.0  # a worker stopped for a hung loop answers what is in flight (gunicorn's graceful_timeout 10 s)

    def __init__(self, state_dir: str, loops: dict[str, Callable[[Any], None]],
                 stale: float = Settings.health_stale) -> None:
        self.health = health
        self.stale = stale
        self.hdir = health.health_dir(state_dir)
        self.path = self.hdir / "supervisor.json"
        self.loops = loops
        self.host = 0  # the worker hosting the loops, once seen
        self.ended = 0  # the last host whose end is recorded
        self.record: dict[str, dict[str, Any]] = {
            key: {"pid": None, "restarts": 0, "last_exit": None, "last_restart": None} for key in loops}
        self.started = 0.0  # the host's start, by the wall clock (shown)
        self.seen = 0.0  # when the host was first seen, by CLOCK_MONOTONIC (its age)
        self.not_before = 0.0
        self.backoff = 0.0
        self.stopping: dict[int, float] = {}  # workers sent SIGTERM for a hung loop: the time to kill them
        self._stop = StopFlag()
        self._thread: Any = None

    def _write(self) -> None:
        try:
            self.health.write(self.path, {"pid": os.getpid(), "host": self.host, "ended": self.ended,
                                          "not_before": self.not_before, "loops": self.record})
        except OSError as exc:
            logging.getLogger(__name__).warning("cannot write %s: %s", self.path, exc)

    def start(self) -> None:
        self.hdir.mkdir(parents=True, exist_ok=True)
        (self.hdir / HOST_RECORD).unlink(missing_ok=True)  # a host of an earlier serve is not ours
        self._write()
        self._thread = threading.Thread(target=self._run, name="multinic-supervisor", daemon=True)
        self._thread.start()

    def _our_worker(self, pid: Any) -> bool:
        found = proc.status(pid)
        return found is not None and found[0] not in ("Z", "X") and found[1] == os.getpid()

    def _hung(self) -> tuple[str, float] | None:
        """The first loop whose heartbeat is older than twice the staleness, and how old (a loop without a
        beat yet counts from when this host was first seen)."""
        for key in self.loops:
            beat = self.health.read(self.hdir / f"{key}.json")
            since = self.health.age(beat) if beat.get("pid") == self.host else None
            since = time.monotonic() - self.seen if since is None else since
            if since > 2 * self.stale:
                return key, since
        return None

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _kill_stragglers(self, now: float) -> None:
        """A worker stopped for a hung loop that is still there after its grace is killed (``now``:
        CLOCK_MONOTONIC's)."""
        for pid, deadline in list(self.stopping.items()):
            if not self._our_worker(pid):
                del self.stopping[pid]
            elif now >= deadline:
                logging.getLogger(__name__).error("worker %s did not stop within %.0f s; killing it", pid,
                                                  self.GRACE)
                self._signal(pid, signal.SIGKILL)
                del self.stopping[pid]

    def check_once(self) -> None:
        log = logging.getLogger(__name__)
        now = time.time()
        self._kill_stragglers(time.monotonic())
        if not self.host:  # a worker took the loops up since the last look (and may have ended already)
            host = self.health.read(self.hdir / HOST_RECORD)
            pid = host.get("pid")
            if not isinstance(pid, int) or pid == self.ended:
                return
            self.host, self.started, self.seen = pid, float(host.get("started") or now), time.monotonic()
            for rec in self.record.values():
                rec.update(pid=pid, started=self.started)
            self._write()
        culprit = None
        if self._our_worker(self.host):
            hung = self._hung()
            if hung is None:
                return
            culprit, since = hung
            log.error("%s (worker %s) showed no sign of life for %.0f s; stopping that worker (killed if it is "
                      "still there in %.0f s)", culprit, self.host, since, self.GRACE)
            self._signal(self.host, signal.SIGTERM)
            self.stopping[self.host] = time.monotonic() + self.GRACE
            ended = f"hung for {since:.0f} s, its worker stopped"
        else:
            ended = "its worker ended (gunicorn starts another)"
        if time.monotonic() - self.seen > 60:
            self.backoff = 0.0  # it ran for a while: restart at once
        delay = self.backoff
        self.backoff = min(max(1.0, delay * 2), self.BACKOFF_MAX)
        crashed = {key: beat["crashed"] for key in self.loops
                   if isinstance((beat := self.health.read(self.hdir / f"{key}.json")).get("crashed"), str)
                   and beat.get("pid") == self.host}
        log.error("loops (worker %s): %s%s; restarting them%s", self.host, ended,
                  "".join(f"; {k}: {v}" for k, v in crashed.items()), f" in {delay:.0f} s" if delay else "")
        for key in self.loops:
            rec = self.record[key]
            exit_text = (f"thread died: {crashed[key]}" if key in crashed
                         else ended if culprit in (None, key) and not crashed
                         else f"restarted with {culprit or ', '.join(crashed)} ({ended})")
            rec.update(restarts=rec["restarts"] + 1, last_exit=exit_text, last_restart=now, pid=None)
        self.ended = self.host  # the next host waits for this record (and the backoff)
        self.host = 0
        self.not_before = time.monotonic() + delay
        self._write()

    def _run(self) -> None:
        while not self._stop.wait(health.beat_interval(self.stale) / 2):
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the supervisor must not die of one bad round
                logging.getLogger(__name__).exception("supervisor round failed")

    def wake(self) -> None:
        """Look now (gunicorn reaped a worker: perhaps the loops' host)."""
        self._stop.wake()

    def stop(self) -> None:
        """Stop supervising (gunicorn stops the workers, and the loops with them)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=5)
