"""Pause points for fault tests: ``MULTINIC_FAULT=<Verb>[@<point>]`` makes the plugin stop inside
that verb, so a test can ``kill -9`` it there deterministically (never set in production).

Points: ``saved`` (default: the new state is persisted, the kernel not yet changed - what a
crash between "intent" and "apply" leaves) and ``applied`` (state and kernel changed, the answer
not yet sent - dockerd sees the call fail). On reaching it the plugin writes
``<state dir>/fault-reached`` (``<Verb>@<point> <pid>``) and sleeps.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

SPEC = os.environ.get("MULTINIC_FAULT", "")
_verb = ""


def entering(verb: str) -> None:
    """The API layer says which verb this worker is serving (sync workers: one at a time)."""
    global _verb
    _verb = verb


def point(where: str, state_dir: str | os.PathLike[str]) -> None:
    if not SPEC or not _verb:
        return
    verb, _, at = SPEC.partition("@")
    if verb != _verb or (at or "saved") != where:
        return
    Path(state_dir, "fault-reached").write_text(f"{verb}@{where} {os.getpid()}\n")
    time.sleep(3600)  # until the test kills us
