"""Health that tells the truth across processes: small JSON files in ``<state dir>/health/``, each with one
writer, renamed into place. A supervised loop's record is written every few seconds (:func:`beat_interval`)
by one thread of its process, and each loop reports its rounds; ``multinic serve`` reports the state file
and its reconcile at start; a worker reports a verb that failed, until that verb succeeds again.
:func:`report` is what ``/Plugin.Health``, ``multinic status`` and ``doctor`` read: ``healthy`` is false
while any ``problems`` entry stands (docs/ARCHITECTURE.md has the JSON shape, which other tools parse:
keep it stable).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..kernel import proc
from ..settings import Settings

log = logging.getLogger(__name__)

HEALTH_DIR = "health"
BEAT_INTERVAL = 1.0
LOOP_KEYS = {"healer": "healer", "gateway watcher": "watcher"}
COUNTERS = ("rounds", "repairs", "failures")


def health_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / HEALTH_DIR


def write(path: Path, data: dict[str, Any]) -> None:
    """Rename into place without fsync: health files are advisory and rewritten every few seconds."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- writer side: in the worker hosting the loops ---------------------------------------------------
class Beat:
    """One loop's record (``<loop>.json``); the heartbeat thread writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        previous = read(path)
        self.data: dict[str, Any] = {k: int(previous.get(k) or 0) for k in COUNTERS}
        for key in ("last_error", "last_error_at"):
            self.data[key] = previous.get(key)
        self.data.update(pid=os.getpid(), started=time.time(), last_ok=None, ok=True)
        self.touch()

    def touch(self) -> None:
        """A sign of life: ``last_run`` by the wall clock (shown), ``beat`` by CLOCK_MONOTONIC (aged)."""
        self.data["last_run"], self.data["beat"] = time.time(), time.monotonic()

    def note(self, ok: bool, error: BaseException | str | None = None, repaired: bool = False) -> None:
        with self.lock:
            self.touch()
            now = self.data["last_run"]
            self.data["rounds"] += 1
            self.data["ok"] = ok
            self.data["waiting"] = None
            if repaired:
                self.data["repairs"] += 1
            if ok:
                self.data["last_ok"] = now
            else:
                self.data["failures"] += 1
                self.data["last_error"] = str(error)[:500] if error is not None else "failed"
                self.data["last_error_at"] = now
        self.flush()

    def flush(self) -> None:
        with self.lock:
            snapshot = dict(self.data)
        try:
            write(self.path, snapshot)
        except OSError as exc:  # the state dir vanished (cleanup): nothing to report to
            log.debug("health file %s: %s", self.path, exc)

    def waiting(self, reason: str) -> None:
        """Not a failure of the plugin: the loop waits for something outside it (dockerd)."""
        with self.lock:
            self.touch()
            self.data["waiting"] = reason[:500]
        self.flush()


_beats: dict[int, Beat] = {}  # thread ident → the record of the loop running in that thread
_pumping = threading.Event()  # set: the flushing thread should stop


class WatchedFlag:
    """Wraps a loop's stop flag: every look at it is a sign of life (``last_run``). With the fault tests'
    setting (:mod:`plugin.ops.faults`), a look is also where the loop is made to die or hang."""

    def __init__(self, stop: Any, beat: Beat, key: str = "", faults: Any = None) -> None:
        self._stop = stop
        self._beat = beat
        self._key = key
        self._faults = faults

    def set(self) -> None:
        self._stop.set()

    def _look(self) -> None:
        if self._faults is not None:
            self._faults.loop_point(self._key)
        self._beat.touch()

    def is_set(self) -> bool:
        self._look()
        return self._stop.is_set()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():  # beat while waiting: a long wait is not a hang
            self._look()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._stop.wait(min(left, BEAT_INTERVAL))
        return True


def beat_interval(stale: float) -> float:
    """How often the heartbeats are written: a tenth of the staleness, from 1 s to 5 s."""
    return min(max(BEAT_INTERVAL, stale / 10), 5.0)


def start_beat(state_dir: str | os.PathLike[str], name: str, stop: Any, faults: Any = None,
               interval: float = BEAT_INTERVAL) -> WatchedFlag:
    """In the worker hosting the loops: start writing ``<loop>.json`` for the loop that will run in the thread that
    first looks at the returned stop flag (or in this thread); one thread flushes every loop's record, every
    ``interval`` s (:func:`beat_interval`)."""
    beat = Beat(health_dir(state_dir) / f"{LOOP_KEYS.get(name, name)}.json")
    beat.flush()
    flag = WatchedFlag(stop, beat, LOOP_KEYS.get(name, name), faults)
    bind(flag)
    if not any(t.name == "health-beat" and t.is_alive() for t in threading.enumerate()):
        _pumping.clear()
        threading.Thread(target=_pump, args=(interval,), name="health-beat", daemon=True).start()
    return flag


def bind(flag: WatchedFlag) -> None:
    """The loop of ``flag`` runs in this thread: :func:`note` and :func:`waiting` here report to it."""
    _beats[threading.get_ident()] = flag._beat


def _pump(interval: float) -> None:
    while not _pumping.wait(interval):
        for beat in list(_beats.values()):
            beat.flush()


def stop_beats() -> None:
    _pumping.set()
    _beats.clear()


def _mine() -> Beat | None:
    return _beats.get(threading.get_ident())


def note(ok: bool, error: BaseException | str | None = None, repaired: bool = False) -> None:
    """A loop reports one round; a no-op outside a supervised loop (tests calling ``run``)."""
    beat = _mine()
    if beat is not None:
        beat.note(ok, error, repaired)


def passed() -> None:
    """A loop's round went through with nothing to report (the healer found no drift): a failed round
    before it no longer stands. Said as a round only then, so a quiet loop's counters stay as they are."""
    beat = _mine()
    if beat is not None and beat.data.get("ok") is False and not beat.data.get("crashed"):
        beat.note(True)


def waiting(reason: str) -> None:
    """A loop waits for a dependency (reported in its record, not a health problem)."""
    beat = _mine()
    if beat is not None:
        beat.waiting(reason)


def crashed(key: str, error: BaseException) -> None:
    """The loop's thread ended on ``error``: said in its record, which the supervisor reads."""
    beat = _mine()
    if beat is not None:
        with beat.lock:
            beat.data.update(crashed=f"{type(error).__name__}: {error}"[:500], ok=False)
        beat.flush()


# -- other writers ----------------------------------------------------------------------------------
def _failing(state_dir: str | os.PathLike[str], verb: str) -> Path:
    return health_dir(state_dir) / f"failing.{verb}.json"


def note_verb_error(state_dir: str | os.PathLike[str], verb: str, error: BaseException) -> None:
    """A verb failed (not a refusal): a problem until the same verb succeeds. Not until any verb does:
    dockerd follows a failed Join with its own DeleteEndpoint, and answering that clears nothing."""
    record = {"verb": verb, "error": str(error)[:500], "at": time.time()}
    try:
        write(health_dir(state_dir) / "verbs.json", record)
        write(_failing(state_dir, verb), record)
    except OSError:
        pass


def note_verb_ok(state_dir: str | os.PathLike[str], verb: str) -> None:
    """A verb succeeded: its own failure is no longer a problem (one syscall when there was none)."""
    try:
        os.unlink(_failing(state_dir, verb))
    except OSError:
        pass


def note_startup(state_dir: str | os.PathLike[str], ok: bool, error: BaseException | str | None = None) -> None:
    """The reconcile ``multinic serve`` runs before listening (firewall included) worked or not;
    a failure stays a problem until the healer's next successful pass."""
    write(health_dir(state_dir) / "startup.json",
          {"ok": ok, "error": str(error)[:500] if error is not None else None, "at": time.time()})


def note_settings(state_dir: str | os.PathLike[str], refused: tuple[str, ...], firewall: str = "") -> None:
    """The settings ``multinic serve`` refused and replaced by their default (a problem while it serves), and
    the firewall backend it chose (a flavour of :func:`plugin.kernel.firewall.firewall_for`, "" until chosen):
    the one its workers use, which ``status``, metrics and ``doctor`` then show instead of detecting again."""
    write(health_dir(state_dir) / "settings.json", {"refused": list(refused), "firewall": firewall})


def firewall_in_use(state_dir: str | os.PathLike[str]) -> str:
    """The firewall flavour ``multinic serve`` chose in this state directory ("" if none is recorded)."""
    chosen = read(health_dir(state_dir) / "settings.json").get("firewall")
    return chosen if isinstance(chosen, str) else ""


def note_state(state_dir: str | os.PathLike[str], ok: bool, error: str | None, rebuilt: str | None = None) -> None:
    """The state file: usable, rebuilt from dockerd, or not usable (error)."""
    write(health_dir(state_dir) / "state.json", {"ok": ok, "error": error, "rebuilt": rebuilt})


# -- reader side ----------------------------------------------------------------------------------
def age(beat: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds since a loop's last sign of life (``beat``: CLOCK_MONOTONIC, one clock for every process of
    this boot, which a step of the wall clock does not move: NTP on a box without an RTC jumps years);
    None without a beat of this boot."""
    mono = beat.get("beat")
    since = (time.monotonic() if now is None else now) - mono if isinstance(mono, (int, float)) else -1.0
    return round(since, 3) if since >= 0 else None


def report(state_dir: str | os.PathLike[str], stale: float = Settings.health_stale,
           now: float | None = None) -> dict[str, Any]:
    """``now``: CLOCK_MONOTONIC's (the ages of the beats)."""
    hdir = health_dir(state_dir)
    supervisor = read(hdir / "supervisor.json")
    supervised = supervisor.get("loops") if isinstance(supervisor.get("loops"), dict) else {}
    serving = bool(supervisor) and proc.alive(supervisor.get("pid"))
    problems: list[str] = []
    loops: dict[str, Any] = {}
    for key in sorted(set(LOOP_KEYS.values()) | set(supervised)):
        info = read(hdir / f"{key}.json")
        sup = supervised.get(key) if isinstance(supervised.get(key), dict) else {}
        if not info and not sup:
            continue
        since = age(info, now)
        pid = sup.get("pid") or info.get("pid")
        alive = proc.alive(pid) and info.get("pid") == pid and since is not None and since <= stale
        loops[key] = {
            **{k: info.get(k) for k in ("pid", "started", "last_run", "last_ok", "last_error", "last_error_at",
                                        "waiting")},
            **{k: int(info.get(k) or 0) for k in COUNTERS},
            "alive": alive,
            "age": since,
            "restarts": int(sup.get("restarts") or 0),
            "last_exit": sup.get("last_exit"),
            "last_restart": sup.get("last_restart"),
        }
        if not serving:
            continue  # nothing supervises loops (tests, `multinic status` with the plugin stopped)
        if not proc.alive(pid):
            problems.append(f"{key}: process {pid} is dead (gunicorn starts another)")
        elif since is None or since > stale or info.get("pid") != pid:
            problems.append(f"{key}: no sign of life for {since if since is not None else '?'} s (hung or stopped)")
        elif info.get("ok") is False:
            problems.append(f"{key}: last round failed: {info.get('last_error')}")
    if supervisor and not serving:
        problems.append(f"multinic serve (pid {supervisor.get('pid')}) is not running")
    refused = read(hdir / "settings.json").get("refused") if serving else None
    refused = [str(r) for r in refused] if isinstance(refused, list) else []
    problems.extend(f"setting refused: {r}" for r in refused)
    startup = read(hdir / "startup.json") or None
    if startup and startup.get("ok") is False:
        healed = (loops.get("healer") or {}).get("last_ok")
        if not (isinstance(healed, (int, float)) and healed > (startup.get("at") or 0)):
            problems.append(f"reconcile at start failed: {startup.get('error')}")
    state = read(hdir / "state.json") or {"ok": True, "error": None, "rebuilt": None}
    if state.get("ok") is False:
        problems.append(f"state: {state.get('error')}")
    verbs = read(hdir / "verbs.json") or None
    for path in sorted(hdir.glob("failing.*.json")):
        failed = read(path)
        problems.append(f"{failed.get('verb')} failed: {failed.get('error')} (until it succeeds again)")
    return {
        "healthy": not problems,
        "problems": problems,
        "serving": serving,
        "loops": loops,
        "state": state,
        "startup": startup,
        "last_verb_error": verbs,
        "settings_refused": refused,
        "firewall": firewall_in_use(state_dir),
    }
