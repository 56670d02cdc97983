"""A local runner's shared batches: one ``MicroBatcher`` per runner, and a call scored in it.

``runner_batcher`` makes a runner's batcher on first use, sized for its device; ``score_rows``
and ``ascore_rows`` encode a call in the caller's thread and score its rows in that batcher,
so an LLM reranker's instruction views share batches with it.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from milvus_rerank.core.forks import after_fork
from milvus_rerank.providers.local.batching import (
    MAX_BATCH_ITEMS,
    MAX_BATCH_TOKENS,
    PASSES_PER_BATCH,
    MicroBatcher,
    Row,
    RowRunner,
    submit_prepared,
)

__all__ = [
    "CPU_WORKERS",
    "GPU_WORKERS",
    "ascore_rows",
    "runner_batcher",
    "score_rows",
    "workers_for",
]

#: Shared batches a local runner's batcher runs at once by default, on CPUs and on GPUs.
CPU_WORKERS, GPU_WORKERS = 2, 1


def workers_for(asked: object, cpu: bool) -> int:
    """``batch_workers`` as asked, else the device's default (``CPU_WORKERS``, ``GPU_WORKERS``)."""
    if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
        return asked
    return CPU_WORKERS if cpu else GPU_WORKERS


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
                workers=workers_for(runner.options.get("batch_workers"), loaded.device == "cpu"),
            )
            _RUNNERS[runner] = batcher
    return batcher


@after_fork
def _runners_lock_after_fork() -> None:
    """A forked child's parent threads are gone: the lock they may have held starts free."""
    global _RUNNERS_LOCK
    _RUNNERS_LOCK = threading.Lock()


def _wait_seconds(milliseconds: object) -> float:
    return float(milliseconds) / 1000.0 if isinstance(milliseconds, (int, float)) else 0.002


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
