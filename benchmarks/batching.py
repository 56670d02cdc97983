"""Batching across concurrent callers of one local reranker: 32 callers at once vs one at a time.

The MiniLM-shaped cross-encoder of the local benchmark, on the CPU. Each of 32 calls reranks 16
passages of 20-60 words (retrieved chunks) for its own query. The same calls are made all at
once (``asyncio.gather`` of ``arerank``, or one thread each calling ``rerank``) and one at a
time, in turns in one process. Throughput is calls per second over the whole run; latency (p50
and p99 over every repeat) counts from the moment all 32 calls are made, so one at a time a
call waits for the ones before it, as 32 users arriving together would.

On a CPU a call's 16 passages already fill a forward pass (throughput per token is flat past
about 8 rows a pass), so shared batches gain in two ways, each shown by a context row: fuller,
less padded passes (one forward over every call's rows vs one per call, no batcher), and two
passes at once (``batch_workers=2``, the CPU default, vs 1), which keeps busy the cores that
one pass leaves idle. On a GPU, where one call's 16 rows leave the device mostly idle, fuller
passes gain more.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import Row  # noqa: E402
from benchmarks.local import MINILM_SHAPE, QUERY  # noqa: E402

CALLERS = 32
DOCS_PER_CALL = 16
Calls = list[tuple[str, list[str]]]
#: (elapsed seconds, each call's latency) of one run of the calls.
Run = tuple[float, list[float]]


def make_calls(low: int, high: int, seed: int = 7) -> Calls:
    """``CALLERS`` calls, each with its own query and ``DOCS_PER_CALL`` documents."""
    from milvus_rerank.providers.local.tiny import default_vocabulary

    words = default_vocabulary()
    rng = random.Random(seed)
    return [
        (
            f"{QUERY} {i}",
            [
                " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))
                for _ in range(DOCS_PER_CALL)
            ],
        )
        for i in range(CALLERS)
    ]


def together_async(reranker: Any, calls: Calls) -> Run:
    """Every call at once, as ``arerank`` tasks on one event loop."""

    async def one(query: str, docs: list[str], started: float) -> float:
        await reranker.arerank(query, docs)
        return time.perf_counter() - started

    async def main() -> Run:
        started = time.perf_counter()
        latencies = await asyncio.gather(*(one(q, d, started) for q, d in calls))
        return time.perf_counter() - started, list(latencies)

    return asyncio.run(main())


def apart_async(reranker: Any, calls: Calls, queued: bool = True) -> Run:
    """The same ``arerank`` calls, one at a time.

    ``queued``: a call's latency counts from the start of the run (all were made at once, and
    each waits for the ones before it); else from its own start.
    """

    async def main() -> Run:
        latencies = []
        started = time.perf_counter()
        for query, docs in calls:
            begun = time.perf_counter()
            await reranker.arerank(query, docs)
            latencies.append(time.perf_counter() - (started if queued else begun))
        return time.perf_counter() - started, latencies

    return asyncio.run(main())


def together_threads(reranker: Any, calls: Calls) -> Run:
    """Every call at once, one thread each calling ``rerank``."""
    latencies = [0.0] * len(calls)
    gate = threading.Barrier(len(calls) + 1)
    started = 0.0

    def one(i: int) -> None:
        gate.wait()
        reranker.rerank(*calls[i])
        latencies[i] = time.perf_counter() - started

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    gate.wait()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies


def apart_threads(reranker: Any, calls: Calls) -> Run:
    """The same ``rerank`` calls, one at a time (latency from the start of the run)."""
    latencies = []
    started = time.perf_counter()
    for query, docs in calls:
        reranker.rerank(query, docs)
        latencies.append(time.perf_counter() - started)
    return time.perf_counter() - started, latencies


@dataclass
class Measured:
    """One mode's runs: calls per second of each, and every call's latency."""

    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def cell(self) -> str:
        ordered = sorted(self.latencies)
        p50, p99 = statistics.median(ordered), ordered[int(0.99 * (len(ordered) - 1))]
        return (
            f"{statistics.median(self.rates):.2f} calls/s "
            f"(p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms)"
        )

    def over(self, other: Measured) -> float:
        """Median over the repeats of this mode's rate over ``other``'s in the same turn.

        Pairing runs of one turn cancels the drift of a shared, noisy machine.
        """
        return statistics.median(a / b for a, b in zip(self.rates, other.rates, strict=True))


def measure(modes: dict[str, Callable[[], Run]], repeats: int) -> dict[str, Measured]:
    """Each mode's runs, in turns (A B C A B C ...) after one warm-up each."""
    for fn in modes.values():
        fn()
    out = {name: Measured() for name in modes}
    for _ in range(repeats):
        for name, fn in modes.items():
            seconds, each = fn()
            out[name].rates.append(len(each) / seconds)
            out[name].latencies += each
    return out


def run(repeats: int = 5) -> list[Row]:
    """The batching rows."""
    from milvus_rerank import CrossEncoderReranker
    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

    logging.getLogger("transformers").setLevel(logging.ERROR)
    path = build_tiny_cross_encoder(Path(tempfile.mkdtemp()) / "minilm", **MINILM_SHAPE)
    shared = CrossEncoderReranker(str(path), device="cpu").load()
    serial = CrossEncoderReranker(str(path), device="cpu", batch_workers=1).load()
    alone = CrossEncoderReranker(str(path), device="cpu", batch_across_calls=False).load()
    passages = make_calls(20, 60)
    got = measure(
        {
            "async apart": lambda: apart_async(shared, passages),
            "async together": lambda: together_async(shared, passages),
            "async together, one worker": lambda: together_async(serial, passages),
            "async together, off": lambda: together_async(alone, passages),
            "threads apart": lambda: apart_threads(shared, passages),
            "threads together": lambda: together_threads(shared, passages),
        },
        repeats,
    )
    what = f"{CALLERS} concurrent arerank calls of {DOCS_PER_CALL} passages (20-60 words)"
    rows = [
        Row.at_least(
            f"{what}: shared batches vs one at a time",
            got["async together"].cell(),
            got["async apart"].cell(),
            got["async together"].over(got["async apart"]),
            1.3,
        ),
        Row.at_least(
            f"{CALLERS} threads calling rerank, same calls: shared batches vs one at a time",
            got["threads together"].cell(),
            got["threads apart"].cell(),
            got["threads together"].over(got["threads apart"]),
            1.3,
        ),
        Row.report(
            f"  context: {what}, batch_workers=1 (one pass at a time) vs one at a time",
            got["async together, one worker"].cell(),
            got["async apart"].cell(),
            got["async together, one worker"].over(got["async apart"]),
        ),
        Row.report(
            f"  context: {what}, batch_across_calls=False vs one at a time",
            got["async together, off"].cell(),
            got["async apart"].cell(),
            got["async together, off"].over(got["async apart"]),
        ),
    ]
    runner = shared.runner
    encoded = [runner.prepare([q] * len(d), d).rows for q, d in passages]
    every = [row for call in encoded for row in call]

    def forward_all() -> Run:
        started = time.perf_counter()
        runner.forward(every)
        return time.perf_counter() - started, [0.0] * len(encoded)

    def forward_each() -> Run:
        started = time.perf_counter()
        for call in encoded:
            runner.forward(call)
        return time.perf_counter() - started, [0.0] * len(encoded)

    def forward_two() -> Run:
        """Every call's rows sorted together, their passes alternated over two threads."""
        passes = runner.schedule(every)
        halves = [[every[i] for batch in passes[k::2] for i in batch] for k in (0, 1)]
        threads = [threading.Thread(target=runner.forward, args=(half,)) for half in halves]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started, [0.0] * len(encoded)

    ceiling = measure({"each": forward_each, "all": forward_all, "two": forward_two}, repeats)
    for name, what_ran in (
        ("all", "one forward (fuller passes alone)"),
        ("two", "one sorted schedule, two passes at once (the batcher's best case)"),
    ):
        rows.append(
            Row.report(
                f"  context: the same rows in {what_ran} vs one forward per call, no batcher",
                f"{statistics.median(ceiling[name].rates):.2f} calls/s",
                f"{statistics.median(ceiling['each'].rates):.2f} calls/s",
                ceiling[name].over(ceiling["each"]),
            )
        )
    lone = measure(
        {
            "off": lambda: apart_async(alone, passages[:4], queued=False),
            "on": lambda: apart_async(shared, passages[:4], queued=False),
        },
        repeats,
    )
    rows.append(
        Row.at_least(
            "a lone caller (arerank, one call at a time): shared batcher vs batching off",
            lone["on"].cell(),
            lone["off"].cell(),
            lone["on"].over(lone["off"]),
            0.9,
        )
    )
    return rows


if __name__ == "__main__":
    from benchmarks.common import table

    print(table(run()))
