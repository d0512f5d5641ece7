"""Processes as ``/proc`` shows them: whether a pid (or a thread's id) runs, and who its parent is."""

from __future__ import annotations

from typing import Any


def status(pid: Any) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid`` from ``/proc/PID/stat``; None if there is no such process
    (the command name before the state may hold spaces and parentheses: read after the last one)."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: Any) -> bool:
    """Runs (neither a zombie nor dead)."""
    found = status(pid)
    return found is not None and found[0] not in ("Z", "X")
