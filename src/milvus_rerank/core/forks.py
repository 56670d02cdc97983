"""One after-fork hook for the package: a forked child resets what its parent's threads held.

A child has none of its parent's threads, so locks they held never come free and pools they
ran are gone. Each module that keeps such state registers a reset here (``after_fork``);
the resets run in the child, in the order they were registered.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

__all__ = ["after_fork"]

_resets: list[Callable[[], None]] = []
_lock = threading.Lock()


def after_fork(reset: Callable[[], None]) -> Callable[[], None]:
    """Run ``reset`` in every child forked from now on; returns it (usable as a decorator)."""
    with _lock:
        _resets.append(reset)
    return reset


def _in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for reset in list(_resets):
        reset()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_in_child)
