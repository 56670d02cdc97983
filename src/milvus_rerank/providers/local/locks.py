"""A lock taken in the order it was asked for (``FairLock``): the runner's tokenizer lock.

A large call takes the tokenizer a slice at a time; a fair lock lets a small call that asked
meanwhile go between two slices instead of waiting for the large call's end.
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["FairLock"]


class FairLock:
    """A lock taken in the order it was asked for: a release hands it to the longest waiter.

    A plain ``threading.Lock`` lets the thread that releases it take it straight back, so a
    large call tokenizing slice after slice would keep another caller waiting until its end.
    A waiter interrupted (``KeyboardInterrupt``) leaves the queue, or passes the lock on if it
    was already handed to it.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self) -> None:
        """Take the lock, after every caller that asked for it before."""
        with self._mutex:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        try:
            turn.acquire()  # released by ``release``, which hands the lock over held
        except BaseException:
            with self._mutex:
                handed = turn not in self._waiters
                if not handed:
                    self._waiters.remove(turn)
            if handed:
                self.release()
            raise

    def release(self) -> None:
        """Hand the lock to the longest waiter, or free it."""
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of an unheld FairLock")
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
