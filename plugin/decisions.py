"""The gateway watcher's decisions file, ``<state dir>/gateways.json``: per container, the network
chosen for its default route and why, plus who wrote it. Written (atomically) only by the watcher
(:mod:`plugin.watcher`); read by ``multinic status``, the metrics, doctor and uninstall.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .state import write_json_atomically

DECISIONS_FILE = "gateways.json"


def decisions_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / DECISIONS_FILE


def _load(state_dir: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(decisions_path(state_dir), encoding="utf-8") as fh:
            data = json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def load_decisions(state_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """container id → decision (see :meth:`Watcher._record`); {} if none written yet."""
    return _load(state_dir).get("containers") or {}


def load_watcher_info(state_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """{"pid", "driver", "since", "docker"} of the watcher that last wrote the file; {} if none."""
    return _load(state_dir).get("watcher") or {}


def write_decisions(
    state_dir: str | os.PathLike[str], decisions: dict[str, dict[str, Any]], info: dict[str, Any] | None = None
) -> None:
    """Atomic (see :func:`plugin.state.write_json_atomically`): a reader sees the old or the new file."""
    write_json_atomically(
        decisions_path(state_dir), {"version": 1, "watcher": info or {}, "containers": decisions}
    )
