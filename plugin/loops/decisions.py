"""The gateway watcher's decisions, ``<state dir>/gateways.json``: per container, the network chosen for its
default route and why, and who wrote it. This module is its one writer (the watcher, and the cleanup of
containers); ``multinic status``, the metrics and doctor read it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..plan.state import write_json_atomically

FILE = "gateways.json"


def path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / FILE


def _load(state_dir: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path(state_dir), encoding="utf-8") as fh:
            data = json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def load(state_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """container id → decision; {} if none written yet."""
    return _load(state_dir).get("containers") or {}


def load_watcher_info(state_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """{"pid", "driver", "since", "docker"} of the watcher that last wrote the file; {} if none."""
    return _load(state_dir).get("watcher") or {}


def write(state_dir: str | os.PathLike[str], decisions: dict[str, dict[str, Any]],
          info: dict[str, Any] | None = None) -> None:
    """Atomic: a reader sees the old or the new file."""
    write_json_atomically(path(state_dir), {"version": 1, "watcher": info or {}, "containers": decisions})
