"""Single flight: concurrent callers that miss the same key share one computation.

A ``Flight`` is one computation in progress, led by the caller that started it; the others
wait for its outcome (a value, an error, or ``abandoned`` when the leader was cancelled),
threads on an event and coroutines on a future of their own event loop. ``CachedReranker``
keeps the table of flights, one per cache key, under its own lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

__all__ = ["Flight", "running_loop"]


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None (also from sync code under a loop)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Flight:
    """One computation in progress, and its outcome once ``settle`` is called.

    ``loop`` is the leader's event loop, None for a thread. A thread never waits on a
    coroutine's flight (``thread_may_wait``): the coroutine may need a worker thread of its
    loop, and threads blocked waiting could hold every one of them. A coroutine may wait on
    any flight: awaiting holds no thread.

    Attributes:
        loop: The event loop of the leader, or None when a thread leads.
        value: The outcome, once settled without error.
        error: The leader's error, delivered to every waiter (never kept).
        abandoned: The leader stopped (cancelled, interrupted) without an outcome: a waiter
            asks again.
    """

    __slots__ = ("_done", "_futures", "_lock", "abandoned", "error", "loop", "value")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        self.value: Any = None
        self.error: Exception | None = None
        self.abandoned = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def thread_may_wait(self) -> bool:
        """Whether a thread (a sync caller) may block on this flight: a thread leads it."""
        return self.loop is None

    def settle(
        self, value: Any = None, *, error: Exception | None = None, abandoned: bool = False
    ) -> None:
        """Record the outcome and wake every waiter, threads and coroutines."""
        with self._lock:
            self.value, self.error, self.abandoned = value, error, abandoned
            self._done.set()
            futures, self._futures = self._futures, []
        for loop, future in futures:
            with contextlib.suppress(RuntimeError):  # that loop is closed: no one waits there
                loop.call_soon_threadsafe(_wake, future)

    def wait(self) -> None:
        """Block this thread until the flight is settled."""
        self._done.wait()

    async def until_settled(self) -> None:
        """Wait until the flight is settled; cancelling this waiter cancels no one else."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._done.is_set():
                return
            self._futures.append((loop, future))
        await future


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled waiter's future stays cancelled
        future.set_result(None)
