"""``AsyncGate``: at most so many holders at once, first come first served, across event loops.

``serve``'s batcher scores requests of a reranker with its own async path on the event loop
that received them; the gate bounds how many run at once (``batch_workers``) over every loop
serving the app, as its worker threads bound the others.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from types import TracebackType

__all__ = ["AsyncGate"]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class AsyncGate:
    """An async semaphore that any event loop may hold (``async with gate:``).

    A released place goes to the longest waiter, on its own loop; a waiter cancelled after
    it was handed a place gives it back.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._held = 0
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def held(self) -> int:
        """Places held now."""
        return self._held

    async def acquire(self) -> None:
        """Wait for a place (a cancelled wait takes none)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._held < self.size and not self._waiters:
                self._held += 1
                return
            waiter: asyncio.Future[None] = loop.create_future()
            entry = (loop, waiter)
            self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            with self._lock:
                handed = entry not in self._waiters
                if not handed:
                    self._waiters.remove(entry)
            if handed:  # the place came with the cancellation: pass it on
                self.release()
            raise

    def release(self) -> None:
        """Give a place back: to the longest waiter whose loop still runs, else free it."""
        with self._lock:
            while self._waiters:
                loop, waiter = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(_wake, waiter)
                except RuntimeError:  # its loop is closed: nobody waits there
                    continue
                return
            self._held -= 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
