"""The two kinds of error a verb can end with, and what the user sees of each.

- :class:`Refusal`: the request cannot be done as asked, and the user can fix it. HTTP 4xx, an ``Err``
  that names the field and the fix, an info line in the log, nothing changed.
- :class:`Failure`: the host failed us (the kernel, the firewall, the state file, a setting). HTTP 500,
  an ``Err`` that says what failed, a traceback in the log, a mark in health and the error metric.
  Any other exception a verb raises is a failure too.
"""

from __future__ import annotations


class MultinicError(Exception):
    """An error whose message is what the user sees (as ``Err``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Refusal(MultinicError):
    """A refusal the user can act on: the message names the option and the fix."""


class Failure(MultinicError):
    """The host failed: the message says what failed (and, where there is one, what fixes it)."""
