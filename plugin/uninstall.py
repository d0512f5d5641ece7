"""Uninstall inside containers: remove the policy routing the gateway watcher put in each container
it recorded (``multinic cleanup``; stop the watcher first). Host objects are the writer's job."""

from __future__ import annotations

import logging
import os

from . import reconcile
from .decisions import load_decisions, load_watcher_info, write_decisions

log = logging.getLogger(__name__)


def remove_all(state_dir: str | os.PathLike[str]) -> int:
    """Uninstall: remove our rules and routes from every container the watcher recorded (stop the
    watcher first). Needs no dockerd; a container that is gone is skipped. Returns how many changed."""
    changed = 0
    for cid, dec in load_decisions(state_dir).items():
        sandbox = dec.get("sandbox") or ""
        if not sandbox or not os.path.exists(sandbox):
            continue  # container gone (or its netns not visible): the pid may belong to anything now
        try:
            netns = f"/proc/{int(dec.get('pid') or 0)}/ns/net"
            if reconcile.remove_container(netns, expect=dec.get("sandbox") or None):
                changed += 1
        except (OSError, ValueError, reconcile.NotThatNetns) as exc:
            log.debug("container %s: %s", cid[:12], exc)
    write_decisions(state_dir, {}, load_watcher_info(state_dir))
    return changed
