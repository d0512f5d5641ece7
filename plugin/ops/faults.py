"""Pause points for fault tests: the setting ``fault`` (``MULTINIC_FAULT=<Verb>[@<point>]``) makes the plugin
stop inside that verb so a test can ``kill -9`` it there (never set in production). Points: ``saved``
(the state is persisted, the kernel not yet changed) and ``applied`` (both changed, the answer not sent).
On reaching one the plugin writes ``<state dir>/fault-reached`` (``<Verb>@<point> <pid>``) and sleeps."""

from __future__ import annotations

import os
import time
from pathlib import Path


class Faults:
    def __init__(self, spec: str, state_dir: str | os.PathLike[str]) -> None:
        self.verb, _, at = spec.partition("@")
        self.at = at or "saved"
        self.state_dir = state_dir
        self.current = ""  # the verb this (sync) worker is serving

    def entering(self, verb: str) -> None:
        self.current = verb

    def point(self, where: str) -> None:
        if not self.verb or self.current != self.verb or where != self.at:
            return
        Path(self.state_dir, "fault-reached").write_text(f"{self.verb}@{where} {os.getpid()}\n")
        time.sleep(3600)  # until the test kills us

    def loop_point(self, loop: str) -> None:
        """With ``MULTINIC_FAULT=loops``: a loop that finds ``<state dir>/fault-loop`` saying ``kill <loop>``
        dies (its thread ends on :class:`LoopKilled`), ``hang <loop>`` stops looking at anything, as a hung
        loop does (the file is consumed)."""
        if self.verb != "loops":
            return
        path = Path(self.state_dir, "fault-loop")
        try:
            action, _, name = path.read_text().strip().partition(" ")
        except OSError:
            return
        if name != loop:
            return
        path.unlink(missing_ok=True)
        if action == "kill":
            raise LoopKilled(f"{loop} killed by the fault test")
        while action == "hang":
            time.sleep(3600)


class LoopKilled(BaseException):
    """Ends a loop's thread whatever it catches (fault tests only)."""
