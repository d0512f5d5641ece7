"""Veths of removed endpoints, deleted by a thread after the response: the kernel's veth deletion waits
for an RCU grace period, which no verb should pay. A retired veth carries the tag ``multinic:gone:<id>``;
a crash before its deletion leaves it to the whole-host writer."""

from __future__ import annotations

import logging
import threading

from .links import delete_link_index
from .netlink import Rtnl

log = logging.getLogger(__name__)


class Reaper:
    """One thread per process, started with the first deletion handed to it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[int] = []  # ifindexes
        self._thread: threading.Thread | None = None
        self._busy = False

    def delete_later(self, indexes: list[int]) -> None:
        if not indexes:
            return
        with self._cond:
            self._queue.extend(indexes)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="multinic-reaper", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                while not self._queue:
                    self._cond.wait()
                batch, self._queue[:] = list(self._queue), []
                self._busy = True
            _delete(batch)

    def wait(self) -> None:
        """Until every deletion handed over is done (tests, a worker's clean exit)."""
        with self._cond:
            batch, self._queue[:] = list(self._queue), []
        if batch:
            _delete(batch)
        with self._cond:
            while self._busy:
                self._cond.wait(1.0)


def _delete(indexes: list[int]) -> None:
    try:
        with Rtnl() as rt:
            for index in indexes:
                delete_link_index(rt, index)
    except Exception:  # noqa: BLE001 - retired links are the whole-host writer's to remove
        log.exception("deferred deletion of links %s failed; the healer removes them", indexes)


_reaper = Reaper()
delete_later = _reaper.delete_later
wait = _reaper.wait
