"""One bound on a reranker's requests in flight, shared by every event loop that calls it.

``asyncio.Semaphore`` belongs to one loop; a reranker is called from the private loop of its
sync calls and from any number of callers' loops, so ``RequestSlots`` hands a freed slot to
the oldest waiter, on whichever loop it waits (woken through that loop).
"""

from __future__ import annotations

import asyncio
import collections
import threading

__all__ = ["RequestSlots"]


class RequestSlots:
    """A counting semaphore that tasks on any number of event loops share."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._free = size
        self._waiters: collections.deque[_Waiter] = collections.deque()

    @property
    def free(self) -> int:
        """Slots no request holds now."""
        with self._lock:
            return self._free

    async def acquire(self, timeout: float | None = None) -> bool:
        """Take a slot without blocking the event loop: False if none came within ``timeout``.

        The task waits on a future of its own, not through ``asyncio.wait_for``, so cancelling
        it always stops it, even in the loop turn a slot reaches it (a slot that came then is
        passed on).
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            waiter = _Waiter(self, loop, loop.create_future())
            self._waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(timeout, self._expire, waiter)
        try:
            return await waiter.future
        except BaseException:
            with self._lock:
                try:
                    self._waiters.remove(waiter)
                    queued = True
                except ValueError:
                    queued = False
            future = waiter.future
            if not queued and future.done() and not future.cancelled() and future.result():
                self.release()  # the slot arrived as the task was cancelled: pass it on
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, waiter: _Waiter) -> None:
        """Stop ``waiter`` waiting at its timeout, unless a slot is already on its way."""
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                return  # granted: its slot is being delivered
        if not waiter.future.done():
            waiter.future.set_result(False)

    def release(self) -> None:
        """Give a slot back: to the oldest waiter still waiting, else to the pool."""
        with self._lock:
            while self._waiters:
                if self._waiters.popleft().grant():
                    return
            self._free += 1


class _Waiter:
    """A task waiting for a slot on its own loop."""

    def __init__(
        self, slots: RequestSlots, loop: asyncio.AbstractEventLoop, future: asyncio.Future[bool]
    ) -> None:
        self.slots, self.loop, self.future = slots, loop, future

    def grant(self) -> bool:
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # its loop is closed
            return False
        return True

    def _deliver(self) -> None:
        if self.future.done():  # cancelled meanwhile: the slot goes to the next waiter
            self.slots.release()
        else:
            self.future.set_result(True)
