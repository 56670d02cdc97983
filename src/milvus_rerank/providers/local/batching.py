"""Batching across concurrent callers: many callers' rows scored together, a budget per forward.

A ``MicroBatcher`` owns a queue and up to ``workers`` worker threads. A caller encodes its own
pairs (in its own thread), submits the rows with their token counts and a ``finish`` step, and
gets a ``concurrent.futures.Future``: a thread waits on it, a coroutine awaits
``asyncio.wrap_future`` of it. Nothing belongs to an event loop, so any number of threads,
loops and ``asyncio.run`` calls share one batcher.

A worker cuts the queued rows into micro-batches of at most ``max_items`` rows and
``max_tokens`` tokens, taking as much of each waiting caller as fits, in turn (a caller with
rows left goes to the back), so a small call never waits for a large one to finish; it runs
``forward`` on each micro-batch and a caller's ``finish`` once all its rows are done. While
callers do come together (the last batch held more than one, and no worker has been idle
for ``IDLE_EXIT`` since), it waits up to ``max_wait`` for company (less once a batch is
full); a lone caller is served at once. While rows are left over after a worker took its
micro-batch, another worker (up to ``workers``) takes the next one and runs it at the same
time: on a CPU, two forward passes at once keep busy the cores
that one pass leaves idle (its single-threaded operations, its threads' waits), which gains
more than fuller passes alone (``benchmarks/batching.py`` measures both). Past
``max_pending`` rows queued, ``submit`` raises ``Overloaded``. Cancelling a future drops its
rows not yet taken, at once; a failing ``forward`` fails exactly the callers with rows in
that batch. A worker thread ends after ``IDLE_EXIT`` seconds without work; workers start
again on demand.

Every local reranker scores through its runner's batcher (``runner_batcher``: one per runner,
so an LLM reranker's instruction views share batches with it); ``serve`` builds its own
request batcher over the same machinery.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from milvus_rerank.core.errors import ConfigurationError, RerankError

__all__ = [
    "IDLE_EXIT",
    "MAX_BATCH_ITEMS",
    "MAX_BATCH_TOKENS",
    "PASSES_PER_BATCH",
    "MicroBatcher",
    "Overloaded",
    "RowRunner",
    "ascore_rows",
    "runner_batcher",
    "score_rows",
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
    taken: int = 0  # rows handed to a forward (or dropped) so far
    done: int = 0  # rows with an output so far


class MicroBatcher(Generic[Item, Out]):
    """Scores many callers' rows in shared ``forward`` calls (see the module docstring).

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
            if (value is not None or what in ("max_items", "workers")) and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(f"{what} must be a positive int, got {value!r}")
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
        self._reset()
        _ALL.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._threads: list[threading.Thread] = []  # live worker threads
        self._idle = 0  # workers waiting for work
        self._pending = 0  # rows queued and not yet taken
        self._pending_tokens = 0
        self._last_jobs = 0  # callers in the last forward
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
            self.check_room(len(items))
            self._pending += len(items)
            self._pending_tokens += sum(costs)
            self._jobs.append(job)
            if not self._idle:
                self._start_worker()
            self._cond.notify_all()  # an idle worker, or one waiting for company to fill up
        future.add_done_callback(lambda done: self._drop(job) if done.cancelled() else None)
        return future

    def _drop(self, job: _Job) -> None:
        """A cancelled caller: its rows not yet taken leave the queue now."""
        with self._cond:
            self._release(job, len(job.items))
            if job in self._jobs:
                self._jobs.remove(job)
            self._cond.notify()

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
                me = threading.current_thread()
                if me in self._threads:
                    self._threads.remove(me)
                # Another live worker goes on with the queue; else its callers get the error.
                orphans = [] if self._threads else list(self._jobs)
                for job in orphans:
                    self._jobs.remove(job)
                    self._release(job, len(job.items))
            for job in orphans:
                _fail(job.future, exc)
            if not isinstance(exc, Exception):
                raise
            logger.error(
                "%s: a batcher worker failed; its queued callers get the error",
                self.name,
                exc_info=True,
            )

    def _serve(self) -> None:
        fresh = True
        while True:
            with self._cond:
                if not self._jobs:
                    idle_until = time.monotonic() + IDLE_EXIT
                    self._idle += 1
                    try:
                        while not self._jobs and (left := idle_until - time.monotonic()) > 0:
                            self._cond.wait(left)
                    finally:
                        self._idle -= 1
                    if not self._jobs:
                        # Nothing came for IDLE_EXIT: callers are no longer coming together,
                        # so the next one is served at once, not after a wait for company.
                        self._last_jobs = 0
                        me = threading.current_thread()
                        if me in self._threads:
                            self._threads.remove(me)
                        return
                    fresh = True
                if fresh and self.max_wait > 0 and self._last_jobs > 1:
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
        chunks: list[tuple[_Job, int, int]] = []
        count = tokens = 0
        for _ in range(len(self._jobs)):
            job = self._jobs[0]
            if job.future.done():  # cancelled, or failed
                self._jobs.popleft()
                self._release(job, len(job.items))
                continue
            start = end = job.taken
            while end < len(job.items) and count < self.max_items:
                cost = job.costs[end]
                if (
                    self.max_tokens is not None
                    and (chunks or end > start)
                    and tokens + cost > self.max_tokens
                ):
                    break
                tokens += cost
                count += 1
                end += 1
            if end == start:
                break  # the budget is spent
            chunks.append((job, start, end))
            self._release(job, end)
            self._jobs.popleft()
            if end < len(job.items):
                self._jobs.append(job)  # round-robin: its next chunk after the others' turn
        return chunks

    def _run_batch(self, chunks: list[tuple[_Job, int, int]]) -> None:
        items = [item for job, start, end in chunks for item in job.items[start:end]]
        try:
            outputs = list(self._forward(items))
            if len(outputs) != len(items):
                raise RuntimeError(f"forward returned {len(outputs)} outputs for {len(items)} rows")
        except BaseException as exc:  # every caller in this batch gets the failure
            with self._cond:
                for job, _, _ in chunks:
                    self._release(job, len(job.items))
                    if job in self._jobs:
                        self._jobs.remove(job)
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


def _after_fork() -> None:
    """A forked child has none of the parent's threads: its batchers start empty."""
    global _RUNNERS_LOCK
    _RUNNERS_LOCK = threading.Lock()
    for batcher in list(_ALL):
        batcher._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


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


_RUNNERS: weakref.WeakKeyDictionary[Any, MicroBatcher[Row, float]] = weakref.WeakKeyDictionary()
_RUNNERS_LOCK = threading.Lock()


def runner_batcher(runner: RowRunner) -> MicroBatcher[Row, float]:
    """The batcher of ``runner``'s rows, made on first use (one per runner).

    A micro-batch holds ``PASSES_PER_BATCH`` forward passes' worth of tokens where passes
    have a token budget (CPUs: 4 x 1,024), enough rows to sort by length while callers finish
    a few passes apart; else (GPUs) at least ``batch_size`` rows of the full window, so full
    batches still form. Its wait is the runner's ``batch_wait_ms``, its ``workers`` the
    runner's ``batch_workers`` (2 on CPUs, 1 on GPUs). The batcher holds the runner weakly:
    a runner and its batcher go away together.
    """
    with _RUNNERS_LOCK:
        batcher = _RUNNERS.get(runner)
        if batcher is None:
            ref = weakref.ref(runner)

            def forward(rows: list[Row]) -> list[float]:
                live = ref()
                if live is None:  # pragma: no cover - a caller holds the runner while it waits
                    raise RuntimeError("the runner of these rows is gone")
                return live.forward(rows)

            loaded = runner.load()
            budget = runner.token_budget(loaded.device)
            batcher = MicroBatcher(
                forward,
                max_wait=_wait_seconds(runner.options.get("batch_wait_ms")),
                max_items=max(MAX_BATCH_ITEMS, runner.batch_size),
                max_tokens=PASSES_PER_BATCH * budget
                if budget is not None
                else max(MAX_BATCH_TOKENS, runner.batch_size * int(loaded.max_length)),
                workers=_workers(runner.options.get("batch_workers"), loaded.device == "cpu"),
            )
            _RUNNERS[runner] = batcher
    return batcher


#: Shared batches a local runner's batcher runs at once by default, on CPUs and on GPUs.
CPU_WORKERS, GPU_WORKERS = 2, 1


def _workers(asked: object, cpu: bool) -> int:
    """``batch_workers`` as asked, else the device's default."""
    if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
        return asked
    return CPU_WORKERS if cpu else GPU_WORKERS


def _wait_seconds(milliseconds: object) -> float:
    return float(milliseconds) / 1000.0 if isinstance(milliseconds, (int, float)) else 0.002


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


def score_rows(
    runner: RowRunner, family: Any, queries: Sequence[str], documents: Sequence[str]
) -> tuple[list[float], list[int]]:
    """Scores and tokens per pair, encoded here and scored in the runner's shared batches."""
    prepared = runner.prepare(queries, documents, family)
    future = submit_prepared(runner_batcher(runner), runner, prepared)
    try:
        return future.result()
    finally:
        future.cancel()  # interrupted (or done: a no-op)


async def ascore_rows(
    runner: RowRunner, family: Any, queries: Sequence[str], documents: Sequence[str]
) -> tuple[list[float], list[int]]:
    """Async ``score_rows``: encoded in a worker thread; cancelling drops the queued rows."""
    prepared = await asyncio.to_thread(runner.prepare, queries, documents, family)
    return await asyncio.wrap_future(submit_prepared(runner_batcher(runner), runner, prepared))


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
