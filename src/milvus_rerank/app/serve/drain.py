"""``serve``'s drain: how a stopping server answers every request it holds (``Drain``).

Once started (SIGTERM or Ctrl-C, in ``server.py``), new rank requests are refused 503 and
``/health`` says ``draining``; the requests in flight get the grace period to finish, oldest
first, and those still running then are cut: each answered 503 with ``Retry-After`` in its
route's shape, summed up in one log line (docs/serve.md, "Starting and stopping").
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from milvus_rerank.app.serve.failures import log

__all__ = ["CUT_WAIT", "Cut", "Drain"]

T = TypeVar("T")


def _always(_: object) -> bool:
    return True


#: Seconds the requests cut at the grace's end get to send their 503 before the server exits.
CUT_WAIT = 2.0


class Cut(Exception):
    """The drain's grace ran out before this request was answered."""


class Drain:
    """A server's drain, shared by every event loop running its app.

    ``run`` awaits requests through ``guard``, which counts them in flight and, once the drain
    ``cut``s, cancels them with ``Cut``. ``start`` marks the drain begun (safe from a signal
    handler) and calls ``on_start`` once (it must be as safe: the app's is the batcher's
    ``prefer_oldest``); ``finish`` waits out the grace and cuts what is left.
    """

    def __init__(self, on_start: Callable[[], None] | None = None) -> None:
        self._on_start = on_start
        self._lock = threading.Lock()
        self._waiters: set[asyncio.Future[None]] = set()
        self.started_at: float | None = None
        self.cut_at: float | None = None
        self.inflight = 0
        #: Requests answered whole after the drain began, answered with an error (a 429, a
        #: failure), refused while draining, and cut.
        self.answered = self.errors = self.refused = self.cut = 0

    @property
    def draining(self) -> bool:
        """Whether the drain has begun."""
        return self.started_at is not None

    def start(self) -> None:
        """Begin draining (a no-op once begun); plain assignments, safe in a signal handler."""
        if self.started_at is None:
            self.started_at = time.monotonic()
            if self._on_start is not None:
                self._on_start()

    async def guard(self, work: Awaitable[T], succeeded: Callable[[T], bool] = _always) -> T:
        """``work``'s result, counted in flight; ``Cut`` (``work`` cancelled) when cut first.

        After the drain began, a result ``succeeded`` accepts counts as answered whole, any
        other result or error as answered with an error (a 429 is not a request served).
        """
        loop = asyncio.get_running_loop()
        cut: asyncio.Future[None] = loop.create_future()
        task: asyncio.Future[T] = asyncio.ensure_future(work)
        with self._lock:
            self.inflight += 1
            self._waiters.add(cut)
            if self.cut_at is not None:
                cut.set_result(None)
        outcome: bool | None = None  # None: cut or cancelled; else whether it succeeded
        try:
            waits: set[asyncio.Future[Any]] = {task, cut}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                outcome = False
                result = task.result()
                outcome = succeeded(result)
                return result
            task.cancel()
            await asyncio.wait({task})  # let it unwind (its queued rows are dropped)
            raise Cut
        finally:
            if not task.done():  # this request itself was cancelled
                task.cancel()
            with self._lock:
                self.inflight -= 1
                self._waiters.discard(cut)
                if outcome is not None and self.started_at is not None:
                    if outcome:
                        self.answered += 1
                    else:
                        self.errors += 1

    def note_refused(self) -> None:
        """Count a request refused because the server is draining."""
        with self._lock:
            self.refused += 1

    def note_cut(self) -> None:
        """Count a request answered 503 at the grace's end."""
        with self._lock:
            self.cut += 1

    def cut_now(self) -> int:
        """Cut every request in flight (and any guarded later); returns how many were."""
        with self._lock:
            if self.cut_at is None:
                self.cut_at = time.monotonic()
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.get_loop().call_soon_threadsafe(_resolve, waiter)
        return len(waiters)

    async def finish(self, grace: float, hurry: threading.Event | None = None) -> None:
        """Wait up to ``grace`` seconds from the start for the requests in flight, then cut.

        ``hurry`` set (a second signal) cuts at once. Logs one line: at WARNING when requests
        were cut, else at INFO.
        """
        self.start()
        assert self.started_at is not None  # noqa: S101 - start() set it
        deadline = self.started_at + grace
        while self.inflight and time.monotonic() < deadline:
            if hurry is not None and hurry.is_set():
                break
            await asyncio.sleep(0.05)
        if self.inflight:
            self.cut_now()
            until = time.monotonic() + CUT_WAIT
            while self.inflight and time.monotonic() < until:
                await asyncio.sleep(0.02)
        self.summary(grace)

    def summary(self, grace: float) -> None:
        """The drain's one log line."""
        started = self.started_at or time.monotonic()
        took = time.monotonic() - started
        if self.cut:
            log.warning(
                "serve: drain: %d requests answered 503, cut %.1f s after the signal (grace "
                "%g s; %d answered whole, %d answered with an error, %d refused while draining)",
                self.cut,
                (self.cut_at or started) - started,
                grace,
                self.answered,
                self.errors,
                self.refused,
            )
        else:
            log.info(
                "serve: drain: %d requests answered whole in %.1f s (%d answered with an error, "
                "%d refused while draining)",
                self.answered,
                took,
                self.errors,
                self.refused,
            )


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
