"""The process's memory as glibc's malloc holds it: one arena for every thread (set before any starts),
and freed heap pages given back to the kernel (at start, and by the loops' host after a busy spell)."""

from __future__ import annotations

import ctypes
from typing import Any

GIVE_BACK_FREE = 1 << 20  # free heap worth a malloc_trim
GIVE_BACK_CHURN = 256 << 10  # ... once the memory in use has moved this much since the last one


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc: Any = None
_in_use_at_last = -1  # the bytes in use at the last give_back


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None)
        except OSError:
            _libc = False
    return _libc


def one_arena() -> None:
    """glibc's malloc gives each thread that allocates an arena of its own, which the loops' threads (idle,
    mostly) would keep: one arena for the process and the workers it forks (mallopt M_ARENA_MAX, as
    MALLOC_ARENA_MAX=1 does), before any thread starts."""
    try:
        _glibc().mallopt(-8, 1)  # M_ARENA_MAX
    except AttributeError:  # not glibc
        pass


def measures_churn() -> bool:
    """glibc 2.33 or newer (``malloc_trim`` and ``mallinfo2``): ``give_back(when_churned=True)`` can see
    whether the memory in use moved."""
    libc = _glibc()
    return bool(libc) and hasattr(libc, "malloc_trim") and hasattr(libc, "mallinfo2")


def give_back(when_churned: bool = False) -> bool:
    """``malloc_trim``: the free pages of the heap back to the kernel; with ``when_churned``, only if a
    megabyte lies free and the memory in use moved since the last time (a verb's or a burst's garbage,
    not the same pages again at every call). True if trimmed."""
    global _in_use_at_last
    libc = _glibc()
    if not libc or not hasattr(libc, "malloc_trim"):
        return False
    if when_churned:
        if not measures_churn():
            return False
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        if info.fordblks < GIVE_BACK_FREE or abs(info.uordblks - _in_use_at_last) < GIVE_BACK_CHURN:
            return False
        _in_use_at_last = info.uordblks
    libc.malloc_trim(0)
    return True
