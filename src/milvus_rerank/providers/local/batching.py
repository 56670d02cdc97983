"""Batching across concurrent callers: many callers' rows scored together, a budget per forward.

A ``MicroBatcher`` queues callers' encoded rows and runs them in shared ``forward`` calls on
up to ``workers`` daemon threads, as much of each waiting caller as fits, in turn; each caller
gets a ``concurrent.futures.Future`` (a thread waits on it, a coroutine awaits
``asyncio.wrap_future`` of it). Every local reranker scores through its runner's batcher
(``runner_batching.py``); ``serve`` batches its requests over the same machinery. How
batches form, wait, fail and end: docs/architecture.md, "Batching across callers".
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from milvus_rerank.core.checks import positive_number
from milvus_rerank.core.errors import ConfigurationError, RerankError
from milvus_rerank.core.forks import after_fork

__all__ = [
    "IDLE_EXIT",
    "MAX_BATCH_ITEMS",
    "MAX_BATCH_TOKENS",
    "PASSES_PER_BATCH",
    "MicroBatcher",
    "Overloaded",
    "RowRunner",
    "spread",
    "submit_prepared",
    "unique_pairs",
]

logger = logging.getLogger("milvus_rerank.batching")

Item = TypeVar("Item")
Out = TypeVar("Out")
R = TypeVar("R")
Row = dict[str, list[int]]

#: Defaults of one micro-batch (one ``forward`` call): rows, and tokens (real, unpadded).
MAX_BATCH_ITEMS = 256
MAX_BATCH_TOKENS = 8192
#: Forward passes' worth of tokens in a local runner's micro-batch, where passes have a budget.
PASSES_PER_BATCH = 4
#: The longest wait for company a batcher takes (seconds).
MAX_WAIT = 60.0
#: Seconds an idle worker thread waits for new work before it ends.
IDLE_EXIT = 0.25


class Overloaded(RerankError):
    """Too many rows already wait to be scored: retry later (``serve`` answers 429)."""


@dataclass(eq=False)
class _Job:
    """One caller's rows: handed to ``forward`` in chunks, finished when all are done."""

    items: Sequence[Any]
    costs: Sequence[int]
    finish: Callable[[list[Any]], Any]
    future: concurrent.futures.Future[Any]
    outputs: list[Any]
    arrival: int = 0  # its place in the order callers came in
    taken: int = 0  # rows handed to a forward (or dropped) so far
    done: int = 0  # rows with an output so far


class MicroBatcher(Generic[Item, Out]):
    """Scores many callers' rows in shared ``forward`` calls (docs/architecture.md).

    A worker takes as much of each waiting caller as fits a micro-batch, in turn, so a small
    call never waits for a large one; while callers come together it waits up to
    ``max_wait`` for company; while rows are left over another worker runs the next
    micro-batch beside it. Cancelling a future drops its rows not yet taken; a failing
    ``forward`` fails the callers with rows in it. Idle workers end after ``IDLE_EXIT``.
    Once ``prefer_oldest`` is called (a server draining) callers are served in arrival
    order instead: the oldest's rows first, whole, then the next's.

    Args:
        forward: Outputs of a list of rows, in order; called from the worker thread only.
        max_wait: Seconds to wait for company while callers come together (0: never wait).
        max_items: Rows per ``forward`` call.
        max_tokens: Tokens (the rows' costs) per ``forward`` call; None for no bound. A row
            costing more than that still goes, alone.
        max_pending: Rows that may wait untaken (None: no bound); past it ``Overloaded``.
        workers: Micro-batches whose ``forward`` may run at once, each in its own thread
            (``forward`` must be safe to call from several threads at once).
        name: The worker threads' name.

    Raises:
        ConfigurationError: a bound that is not a positive int, or a bad ``max_wait``.
    """

    def __init__(
        self,
        forward: Callable[[list[Item]], Sequence[Out]],
        *,
        max_wait: float = 0.002,
        max_items: int = MAX_BATCH_ITEMS,
        max_tokens: int | None = MAX_BATCH_TOKENS,
        max_pending: int | None = None,
        workers: int = 1,
        name: str = "milvus-rerank-batcher",
    ) -> None:
        if (
            isinstance(max_wait, bool)
            or not isinstance(max_wait, (int, float))
            or not math.isfinite(max_wait)
            or not 0 <= max_wait <= MAX_WAIT
        ):
            raise ConfigurationError(
                f"max_wait must be seconds, 0 to {MAX_WAIT:g}, got {max_wait!r}"
            )
        for what, value in (
            ("max_items", max_items),
            ("max_tokens", max_tokens),
            ("max_pending", max_pending),
            ("workers", workers),
        ):
            if value is not None or what in ("max_items", "workers"):
                positive_number(what, value, kind=int)
        self._forward = forward
        self.max_wait = float(max_wait)
        self.max_items = max_items
        self.max_tokens = max_tokens
        self.max_pending = max_pending
        self.workers = workers
        self.name = name
        #: ``forward`` calls that succeeded, and callers finished, since creation.
        self.batches = 0
        self.requests = 0
        #: Whether callers are served oldest first, whole (``prefer_oldest``), not in turn.
        self.oldest_first = False
        self._reset()
        _ALL.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._threads: list[threading.Thread] = []  # live worker threads
        self._idle = 0  # workers waiting for work
        self._forwarding = 0  # workers inside a forward pass
        self._pending = 0  # rows queued and not yet taken
        self._pending_tokens = 0
        self._arrivals = 0  # callers queued since the reset
        self._last_jobs = 0  # callers in the last forward
        self._closed = False  # ``close`` ran: no rows are taken any more
        #: When a ``forward`` last finished (``time.monotonic()``), or the batcher was made.
        self.last_progress = time.monotonic()

    @property
    def pending(self) -> int:
        """Rows queued and not yet handed to ``forward``."""
        return self._pending

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive (it ends once idle)."""
        with self._cond:
            return any(thread.is_alive() for thread in self._threads)

    def prefer_oldest(self) -> None:
        """From now on serve callers oldest first, whole, with no wait for company.

        For a server draining: as many callers as the time left allows get whole answers,
        not each a part of one. A plain assignment (safe in a signal handler).
        """
        self.oldest_first = True

    def check_room(self, count: int) -> None:
        """Raise ``Overloaded`` if ``count`` more rows would pass ``max_pending``.

        A call is let in whatever its size while nothing waits, so a large one is never
        refused forever.
        """
        if self.max_pending is not None and self._pending:
            if self._pending + count > self.max_pending:
                raise Overloaded(
                    f"{self._pending} pairs are already waiting to be scored (at most "
                    f"{self.max_pending}); retry later"
                )

    def submit(
        self,
        items: Sequence[Item],
        costs: Sequence[int],
        finish: Callable[[list[Out]], R],
    ) -> concurrent.futures.Future[R]:
        """Queue rows; the future holds ``finish(outputs)`` once every row has its output.

        Cancel the future to drop the rows not yet taken.

        Raises:
            Overloaded: more than ``max_pending`` rows would be waiting.
            RerankError: the batcher is closed (the interpreter is exiting).
            ValueError: ``costs`` and ``items`` differ in length.
        """
        if len(costs) != len(items):
            raise ValueError(f"{len(costs)} costs for {len(items)} rows")
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        if not items:
            try:
                future.set_result(finish([]))
            except Exception as exc:  # noqa: BLE001 - the caller gets it
                future.set_exception(exc)
            return future
        job = _Job(items, costs, finish, future, [None] * len(items))
        with self._cond:
            if self._closed:
                raise self._closed_error()
            self.check_room(len(items))
            job.arrival = self._arrivals
            self._arrivals += 1
            self._pending += len(items)
            self._pending_tokens += sum(costs)
            self._jobs.append(job)
            # A worker that is neither idle nor in a forward is between passes and takes a
            # queued job itself: another worker starts only for the jobs beyond those, so a
            # caller following its own answer does not start a second thread, and requests
            # arriving together each still get a worker (up to ``workers``).
            if not self._idle and len(self._jobs) > self._alive() - self._forwarding:
                self._start_worker()
            self._cond.notify_all()  # an idle worker, or one waiting for company to fill up
        future.add_done_callback(lambda done: self._drop(job) if done.cancelled() else None)
        return future

    def close(self, timeout: float | None = None) -> bool:
        """Take no more rows: fail the callers still queued, wait for the passes running.

        A forward pass already running ends, and its callers whose rows are all done get
        their outputs; every other caller's future fails with a ``RerankError``, and later
        ``submit`` calls raise one. Run for every batcher at interpreter exit, so no worker
        thread is torn down inside a forward pass (which aborts the process).

        Args:
            timeout: Seconds to wait for the worker threads to end (None: no bound; 0: none).

        Returns:
            Whether every worker thread has ended.
        """
        with self._cond:
            self._closed = True
            orphans = self._remove(list(self._jobs))
            threads = [t for t in self._threads if t is not threading.current_thread()]
            self._cond.notify_all()  # idle workers and those waiting for company end now
        for job in orphans:
            _fail(job.future, self._closed_error())
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def _closed_error(self) -> RerankError:
        return RerankError(
            f"{self.name}: closed (the interpreter is exiting) before these rows were scored"
        )

    def _drop(self, job: _Job) -> None:
        """A cancelled caller: its rows not yet taken leave the queue now."""
        with self._cond:
            self._remove([job])
            self._cond.notify()

    def _remove(self, jobs: list[_Job]) -> list[_Job]:
        """``jobs`` leave the queue, their rows not yet taken dropped; under the lock."""
        for job in jobs:
            self._release(job, len(job.items))
            if job in self._jobs:
                self._jobs.remove(job)
        return jobs

    def _release(self, job: _Job, end: int) -> None:
        """Rows ``job.taken:end`` are no longer pending (taken or dropped); under the lock."""
        if end > job.taken:
            self._pending -= end - job.taken
            self._pending_tokens -= sum(job.costs[job.taken : end])
            job.taken = end

    def _full(self) -> bool:
        return self._pending >= self.max_items or (
            self.max_tokens is not None and self._pending_tokens >= self.max_tokens
        )

    def _alive(self) -> int:
        """Worker threads alive; under the lock."""
        return sum(thread.is_alive() for thread in self._threads)

    def _start_worker(self) -> None:
        """Another worker thread, if fewer than ``workers`` are alive; under the lock."""
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        if len(self._threads) < self.workers:
            thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            with self._cond:
                self._leave()
                # Another live worker goes on with the queue; else its callers get the error.
                orphans = self._remove([] if self._threads else list(self._jobs))
            for job in orphans:
                _fail(job.future, exc)
            if not isinstance(exc, Exception):
                raise
            logger.error(
                "%s: a batcher worker failed; its queued callers get the error",
                self.name,
                exc_info=True,
            )

    def _leave(self) -> None:
        """This worker thread ends; under the lock."""
        me = threading.current_thread()
        if me in self._threads:
            self._threads.remove(me)

    def _serve(self) -> None:
        fresh = True
        while True:
            with self._cond:
                if self._closed:
                    self._leave()
                    return
                if not self._jobs:
                    idle_until = time.monotonic() + IDLE_EXIT
                    self._idle += 1
                    try:
                        while (
                            not (self._jobs or self._closed)
                            and (left := idle_until - time.monotonic()) > 0
                        ):
                            self._cond.wait(left)
                    finally:
                        self._idle -= 1
                    if not self._jobs:
                        # Nothing came for IDLE_EXIT: callers are no longer coming together,
                        # so the next one is served at once, not after a wait for company.
                        self._last_jobs = 0
                        self._leave()
                        return
                    fresh = True
                if fresh and self.max_wait > 0 and self._last_jobs > 1 and not self.oldest_first:
                    deadline = time.monotonic() + self.max_wait
                    while self._jobs and not self._full():
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                fresh = False
                chunks = self._take()
                if self._jobs and not self._idle:
                    self._start_worker()  # rows left over: another forward can run beside this
            if chunks:
                self._run_batch(chunks)

    def _take(self) -> list[tuple[_Job, int, int]]:
        """The next forward: a chunk of each waiting caller in turn, within the budgets."""
        if self.oldest_first:
            return self._take_oldest()
        chunks: list[tuple[_Job, int, int]] = []
        count = tokens = 0
        for _ in range(len(self._jobs)):
            job = self._jobs[0]
            if job.future.done():  # cancelled, or failed
                self._jobs.popleft()
                self._release(job, len(job.items))
                continue
            end, count, tokens = self._chunk(job, count, tokens, bool(chunks))
            if end == job.taken:
                break  # the budget is spent
            chunks.append((job, job.taken, end))
            self._release(job, end)
            self._jobs.popleft()
            if end < len(job.items):
                self._jobs.append(job)  # round-robin: its next chunk after the others' turn
        return chunks

    def _take_oldest(self) -> list[tuple[_Job, int, int]]:
        """The next forward under ``prefer_oldest``: callers' rows in arrival order."""
        chunks: list[tuple[_Job, int, int]] = []
        count = tokens = 0
        for job in sorted(self._jobs, key=lambda queued: queued.arrival):
            if job.future.done():  # cancelled, or failed
                self._jobs.remove(job)
                self._release(job, len(job.items))
                continue
            end, count, tokens = self._chunk(job, count, tokens, bool(chunks))
            if end > job.taken:
                chunks.append((job, job.taken, end))
                self._release(job, end)
            if end < len(job.items):
                break  # the budget is spent before this caller's last row
            self._jobs.remove(job)
        return chunks

    def _chunk(self, job: _Job, count: int, tokens: int, shared: bool) -> tuple[int, int, int]:
        """Where ``job``'s next chunk ends in the budgets (``shared``: rows in it already)."""
        end = job.taken
        while end < len(job.items) and count < self.max_items:
            cost = job.costs[end]
            if (
                self.max_tokens is not None
                and (shared or end > job.taken)
                and tokens + cost > self.max_tokens
            ):
                break
            tokens += cost
            count += 1
            end += 1
        return end, count, tokens

    def _run_batch(self, chunks: list[tuple[_Job, int, int]]) -> None:
        items = [item for job, start, end in chunks for item in job.items[start:end]]
        with self._cond:
            self._forwarding += 1
        try:
            try:
                outputs = list(self._forward(items))
            finally:
                with self._cond:
                    self._forwarding -= 1
            if len(outputs) != len(items):
                raise RuntimeError(f"forward returned {len(outputs)} outputs for {len(items)} rows")
        except BaseException as exc:  # every caller in this batch gets the failure
            with self._cond:
                self._remove([job for job, _, _ in chunks])
            for job, _, _ in chunks:
                _fail(job.future, exc)
            if not isinstance(exc, Exception):
                raise
            return
        finished: list[_Job] = []
        with self._cond:
            self.batches += 1
            self.last_progress = time.monotonic()
            self._last_jobs = len(chunks)
            offset = 0
            for job, start, end in chunks:
                job.outputs[start:end] = outputs[offset : offset + end - start]
                offset += end - start
                job.done += end - start
                if job.done == len(job.items):
                    finished.append(job)
        for job in finished:
            if not job.future.done():
                self._settle(job)

    def _settle(self, job: _Job) -> None:
        """Set the caller's ``finish(outputs)`` (or its exception), counted before it wakes."""
        try:
            result = job.finish(job.outputs)
        except Exception as exc:  # noqa: BLE001 - the caller gets it
            _fail(job.future, exc)
            return
        with self._cond:
            self.requests += 1
        try:
            job.future.set_result(result)
        except concurrent.futures.InvalidStateError:  # cancelled meanwhile
            with self._cond:
                self.requests -= 1


def _fail(future: concurrent.futures.Future[Any], exc: BaseException) -> None:
    try:
        future.set_exception(exc)
    except concurrent.futures.InvalidStateError:  # cancelled meanwhile
        pass


_ALL: weakref.WeakSet[MicroBatcher[Any, Any]] = weakref.WeakSet()


@after_fork
def _after_fork() -> None:
    """A forked child has none of the parent's threads: its batchers start empty."""
    for batcher in list(_ALL):
        batcher._reset()


#: Seconds interpreter exit waits, at most, for the forward passes running to end.
EXIT_WAIT = 60.0


@atexit.register
def _close_all() -> None:
    """At interpreter exit, before daemon threads are torn down: close every batcher.

    A worker thread torn down inside torch's C++ forward aborts the process ("terminate
    called without an active exception", exit 134). Non-daemon threads have been joined
    already, so their calls were served; what still waits belongs to daemon threads.
    """
    batchers = list(_ALL)
    for batcher in batchers:
        batcher.close(timeout=0)  # every queue emptied first: no pass starts anywhere
    deadline = time.monotonic() + EXIT_WAIT
    for batcher in batchers:
        batcher.close(timeout=max(0.0, deadline - time.monotonic()))


# -- local runners ----------------------------------------------------------------------------


class RowRunner(Protocol):
    """What batching needs of a local runner (``LocalModelRunner``)."""

    @property
    def options(self) -> Mapping[str, object]:
        """The reranker's local options (``batch_workers`` among them)."""

    @property
    def batch_size(self) -> int:
        """Rows per forward pass."""

    def load(self) -> Any:
        """The loaded model (its ``device`` says where it runs)."""

    def token_budget(self, device: str) -> int | None:
        """Tokens per forward pass on ``device``; None for no bound."""

    def prepare(self, queries: Sequence[str], documents: Sequence[str], family: Any) -> Any:
        """Pairs encoded to rows, each tagged with its pair."""

    def forward(self, rows: Sequence[Row]) -> list[float]:
        """One raw output a row."""

    def finish(self, prepared: Any, raw: Sequence[float]) -> tuple[list[float], list[int]]:
        """Each pair's score and tokens from its rows' outputs."""


def submit_prepared(
    batcher: MicroBatcher[Row, float], runner: RowRunner, prepared: Any
) -> concurrent.futures.Future[tuple[list[float], list[int]]]:
    """Queue a call's encoded rows, longest first; the future holds its scores and tokens.

    Longest first, a call too large for one micro-batch is cut into contiguous length
    ranges, so its forward passes are (nearly) the ones it would get alone; ``forward`` sorts
    stably by length, so a call within one micro-batch gets exactly its own passes.
    """
    rows: Sequence[Row] = prepared.rows
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))

    def finish(outputs: list[float]) -> tuple[list[float], list[int]]:
        raw = [0.0] * len(outputs)
        for position, value in zip(order, outputs, strict=True):
            raw[position] = value
        return runner.finish(prepared, raw)

    return batcher.submit(
        [rows[i] for i in order], [len(rows[i]["input_ids"]) for i in order], finish
    )


def unique_pairs(
    queries: Sequence[str], documents: Sequence[str]
) -> tuple[list[str], list[str], list[int]]:
    """The distinct (query, document) pairs in first-seen order, and where each pair went.

    A pair scored twice in one call could land in passes of other shapes and get scores a
    float32 rounding apart; scored once, duplicates (the same chunk from two retrievers) tie
    and keep their input order, and cost nothing.
    """
    seen: dict[tuple[str, str], int] = {}
    where = [seen.setdefault((q, d), len(seen)) for q, d in zip(queries, documents, strict=True)]
    if len(seen) == len(where):
        return list(queries), list(documents), where
    pairs = list(seen)
    return [q for q, _ in pairs], [d for _, d in pairs], where


def spread(
    scored: tuple[Sequence[float], Sequence[int]], where: Sequence[int]
) -> tuple[list[float], list[int]]:
    """Per-pair scores and tokens from the unique pairs' (a repeat's tokens count as 0)."""
    scores, tokens = scored
    first: set[int] = set()
    out_tokens = []
    for j in where:
        out_tokens.append(0 if j in first else tokens[j])
        first.add(j)
    return [scores[j] for j in where], out_tokens
