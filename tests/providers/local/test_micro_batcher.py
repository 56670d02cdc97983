"""The micro-batcher's rules, over a recording fake forward: sharing, fairness, waits, drops."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence

import pytest

from milvus_rerank.app.serve.batcher import REQUEST_WORKERS, RequestBatcher
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.results import Usage
from milvus_rerank.providers.local import batching as _batching
from milvus_rerank.providers.local.batching import MicroBatcher, Overloaded


class Recorder:
    """A forward that doubles its inputs, records each call, and can be held on a gate."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.calls: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on = fail_on or set()
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[float]:
        with self._lock:
            self.calls.append(list(items))
            number = len(self.calls)
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        if number in self.fail_on:
            raise RuntimeError(f"forward {number} crashed")
        return [2.0 * item for item in items]

    def seen(self) -> list[int]:
        with self._lock:
            return [item for call in self.calls for item in call]


def submit(
    batcher: MicroBatcher[int, float], items: list[int]
) -> concurrent.futures.Future[list[float]]:
    return batcher.submit(items, [1] * len(items), list)


def held(recorder: Recorder) -> Callable[[], None]:
    """Close the gate; returns a function that waits until a forward is held at it."""
    recorder.gate.clear()
    recorder.entered.clear()

    def wait_held() -> None:
        assert recorder.entered.wait(10), "no forward started"

    return wait_held


def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_a_lone_caller_never_waits_for_company() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, float] = MicroBatcher(recorder, max_wait=60)
    assert submit(batcher, [1, 2]).result(timeout=30) == [2.0, 4.0]
    assert submit(batcher, [3]).result(timeout=30) == [6.0]
    assert batcher.batches == 2 and batcher.requests == 2 and batcher.pending == 0


def test_callers_waiting_together_share_one_forward() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, float] = MicroBatcher(recorder, max_wait=0)
    wait_held = held(recorder)
    first = submit(batcher, [0])
    wait_held()
    others = [submit(batcher, [10 * i + 1, 10 * i + 2]) for i in range(1, 9)]
    assert batcher.pending == 16
    recorder.gate.set()
    assert first.result(timeout=30) == [0.0]
    for i, future in enumerate(others, start=1):  # each gets its own outputs, in order
        assert future.result(timeout=30) == [2.0 * (10 * i + 1), 2.0 * (10 * i + 2)]
    assert len(recorder.calls) == 2 and len(recorder.calls[1]) == 16
    assert batcher.requests == 9


def test_a_small_caller_is_not_stuck_behind_a_large_one() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, float] = MicroBatcher(recorder, max_wait=0, max_tokens=10)
    wait_held = held(recorder)
    large = submit(batcher, list(range(100)))
    wait_held()  # the large caller's first chunk is in the model
    small = submit(batcher, [1000, 1001])
    recorder.gate.set()
    assert small.result(timeout=30) == [2000.0, 2002.0]
    assert large.result(timeout=30) == [2.0 * i for i in range(100)]
    assert all(len(call) <= 10 for call in recorder.calls)
    # The large one's chunk in the model, then its next one (it was queued first), then the
    # small one's turn: not after all ten of the large one's chunks.
    assert recorder.calls[2][:2] == [1000, 1001] and len(recorder.calls) == 11
    assert sorted(recorder.seen()) == sorted([*range(100), 1000, 1001])


@pytest.mark.parametrize(
    ("draining", "order"),
    [
        (False, [[0], [1, 2, 3, 4], [10, 11, 12, 13], [20, 21, 5, 6], [14, 15]]),  # in turn
        (True, [[0], [1, 2, 3, 4], [5, 6, 10, 11], [12, 13, 14, 15], [20, 21]]),  # oldest first
    ],
)
def test_preferring_the_oldest_serves_callers_whole_in_arrival_order(
    draining: bool, order: list[list[int]]
) -> None:
    calls: list[list[int]] = []
    entered, go = threading.Event(), threading.Event()

    def forward(items: list[int]) -> list[float]:
        calls.append(list(items))
        if len(calls) == 1:
            entered.set()
            assert go.wait(30)
        if len(calls) == 2 and draining:
            batcher.prefer_oldest()  # the drain begins after a turn has reordered the queue
        return [2.0 * item for item in items]

    batcher: MicroBatcher[int, float] = MicroBatcher(forward, max_wait=0, max_items=4)
    first = submit(batcher, [0])
    assert entered.wait(10)
    callers = [
        submit(batcher, rows) for rows in ([1, 2, 3, 4, 5, 6], list(range(10, 16)), [20, 21])
    ]
    go.set()
    assert first.result(timeout=30) == [0.0]
    for future, rows in zip(callers, ([1, 2, 3, 4, 5, 6], range(10, 16), [20, 21]), strict=True):
        assert future.result(timeout=30) == [2.0 * row for row in rows]
    assert calls == order and batcher.oldest_first is draining and batcher.pending == 0


def test_preferring_the_oldest_drops_a_cancelled_caller_and_keeps_the_budgets() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, float] = MicroBatcher(recorder, max_wait=0, max_tokens=10)
    wait_held = held(recorder)
    first = submit(batcher, [0])
    wait_held()
    batcher.prefer_oldest()
    gone = batcher.submit([1, 2], [5, 5], list)
    big = batcher.submit([3, 4, 5], [50, 4, 4], list)  # a row over the budget goes alone
    last = batcher.submit([6], [3], list)
    assert gone.cancel() and batcher.pending == 4
    recorder.gate.set()
    assert [f.result(timeout=30) for f in (first, big, last)] == [[0.0], [6.0, 8.0, 10.0], [12.0]]
    assert recorder.calls == [[0], [3], [4, 5], [6]] and batcher.pending == 0


def test_a_row_over_the_token_budget_still_goes_alone() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, float] = MicroBatcher(recorder, max_tokens=5)
    assert batcher.submit([1, 2], [50, 1], list).result(timeout=30) == [2.0, 4.0]
    assert recorder.calls == [[1], [2]]


def test_past_max_pending_submit_raises_overloaded() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, float] = MicroBatcher(recorder, max_wait=0, max_pending=10)
    wait_held = held(recorder)
    first = submit(batcher, list(range(50)))  # nothing waits: let in whatever its size
    wait_held()
    queued = submit(batcher, list(range(8)))
    with pytest.raises(Overloaded, match="retry later"):
        submit(batcher, list(range(3)))
    assert batcher.pending == 8 + 50 - len(recorder.calls[0])
    recorder.gate.set()
    assert len(first.result(timeout=30)) == 50 and len(queued.result(timeout=30)) == 8


def test_a_cancelled_caller_drops_its_rows_at_once() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, float] = MicroBatcher(recorder, max_wait=0, max_items=4)
    wait_held = held(recorder)
    first = submit(batcher, [1, 2, 3, 4, 5, 6])  # 4 taken, 2 queued
    wait_held()
    gone = submit(batcher, [100, 101, 102])
    assert batcher.pending == 5
    assert gone.cancel()
    assert batcher.pending == 2  # before the worker looks again
    first.cancel()  # its taken chunk still runs; its queued rows go
    assert batcher.pending == 0
    kept = submit(batcher, [7])
    recorder.gate.set()
    assert kept.result(timeout=30) == [14.0]
    assert recorder.seen() == [1, 2, 3, 4, 7]


def test_a_failing_forward_fails_exactly_the_callers_in_that_batch() -> None:
    recorder = Recorder(fail_on={1})
    batcher: MicroBatcher[int, float] = MicroBatcher(recorder, max_wait=0, max_items=3)
    wait_held = held(recorder)
    first = submit(batcher, [1, 2])
    wait_held()
    # Queued while the first batch runs: the next batch takes [3] and two rows of the third.
    second, third = submit(batcher, [3]), submit(batcher, [4, 5, 6])
    recorder.gate.set()
    with pytest.raises(RuntimeError, match="forward 1 crashed"):
        first.result(timeout=30)
    assert second.result(timeout=30) == [6.0] and third.result(timeout=30) == [8.0, 10.0, 12.0]

    failing = Recorder(fail_on={2})
    batcher = MicroBatcher(failing, max_wait=0, max_items=3)
    wait_held = held(failing)
    lone = submit(batcher, [1])
    wait_held()
    split = submit(batcher, [2, 3, 4, 5])  # its first 3 rows are in the failing batch
    failing.gate.set()
    assert lone.result(timeout=30) == [2.0]
    with pytest.raises(RuntimeError, match="forward 2 crashed"):
        split.result(timeout=30)
    assert batcher.pending == 0 and failing.seen() == [1, 2, 3, 4]  # its last row is dropped


def test_a_failing_finish_fails_only_its_caller() -> None:
    batcher: MicroBatcher[int, float] = MicroBatcher(Recorder())

    def broken(outputs: list[float]) -> list[float]:
        raise ValueError("bad finish")

    bad = batcher.submit([1], [1], broken)
    good = submit(batcher, [2])
    with pytest.raises(ValueError, match="bad finish"):
        bad.result(timeout=30)
    assert good.result(timeout=30) == [4.0]


def test_callers_coming_together_wait_for_company_up_to_max_wait() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, float] = MicroBatcher(recorder, max_wait=2.0, max_items=4)
    wait_held = held(recorder)
    submit(batcher, [0])
    wait_held()
    pair = [submit(batcher, [1]), submit(batcher, [2])]
    recorder.gate.set()
    for future in pair:  # a batch of two callers: company is now expected
        future.result(timeout=30)
    time.sleep(0.1)  # the worker goes idle (a batch waits for company only on waking up)
    started = time.monotonic()
    late = [submit(batcher, [3])]
    time.sleep(0.2)  # well within max_wait: joins the same batch
    late.append(submit(batcher, [4]))
    for future in late:
        future.result(timeout=30)
    assert recorder.calls[2] == [3, 4]
    # A full batch does not wait out max_wait: four rows fill max_items=4.
    full = [submit(batcher, [i]) for i in range(5, 9)]
    for future in full:
        future.result(timeout=30)
    took = time.monotonic() - started
    assert 1.9 < took < 3.5  # one wait of max_wait, not two


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("milvus-rerank-batcher")]


def test_the_worker_ends_when_idle_and_starts_again() -> None:
    until(lambda: not workers())  # other tests' workers end too
    before = threading.active_count()
    batcher: MicroBatcher[int, float] = MicroBatcher(Recorder())
    for round_ in range(3):
        assert submit(batcher, [round_]).result(timeout=30) == [2.0 * round_]
        until(lambda: not batcher.running, timeout=_batching.IDLE_EXIT + 10)
        until(lambda: threading.active_count() == before)
    assert batcher.batches == 3


def test_at_most_workers_forwards_run_at_once_and_only_while_rows_are_left() -> None:
    running = peak = 0
    lock = threading.Lock()

    def forward(items: list[int]) -> list[float]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return [float(item) for item in items]

    for count in (1, 2, 3):
        peak = 0
        batcher: MicroBatcher[int, float] = MicroBatcher(
            forward, max_wait=0, max_items=4, workers=count
        )
        assert submit(batcher, [1, 2, 3]).result(10) == [1.0, 2.0, 3.0]
        assert peak == 1  # a lone caller that fits one micro-batch: one forward
        many = list(range(40))
        assert submit(batcher, many).result(10) == [float(i) for i in many]
        assert peak == count  # ten micro-batches left over: every worker ran at once
        futures = [submit(batcher, [i, i + 1]) for i in range(0, 40, 2)]
        assert [f.result(10) for f in futures] == [
            [float(i), float(i + 1)] for i in range(0, 40, 2)
        ]
        assert peak == count


def test_a_worker_dying_of_a_bug_fails_the_queued_callers_not_hangs_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batcher: MicroBatcher[int, float] = MicroBatcher(Recorder(), max_wait=0, workers=1)

    def broken() -> list[object]:
        raise OverflowError("timestamp out of range for platform time_t")

    monkeypatch.setattr(batcher, "_take", broken)
    future = submit(batcher, [1, 2])
    with pytest.raises(OverflowError, match="time_t"):
        future.result(10)
    until(lambda: not batcher.running)
    assert batcher.pending == 0
    monkeypatch.undo()
    assert submit(batcher, [3]).result(10) == [6.0]  # a new worker serves the next caller


def test_one_batcher_serves_threads_and_many_event_loops() -> None:
    batcher: MicroBatcher[int, float] = MicroBatcher(Recorder(), max_wait=0.001)

    async def many(offset: int) -> list[list[float]]:
        futures = [asyncio.wrap_future(submit(batcher, [offset + i])) for i in range(20)]
        return list(await asyncio.gather(*futures))

    results: list[list[list[float]]] = []

    def in_thread(offset: int) -> None:
        results.append(asyncio.run(many(offset)))

    threads = [threading.Thread(target=in_thread, args=(1000 * t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for offset in (10_000, 20_000):  # sequential asyncio.run calls on this thread, too
        assert asyncio.run(many(offset)) == [[2.0 * (offset + i)] for i in range(20)]
    for thread in threads:
        thread.join(30)
    assert sorted(r[0][0] for r in results) == [2.0 * 1000 * t for t in range(4)]
    assert batcher.requests == 6 * 20 and batcher.batches < 6 * 20


async def test_cancelling_the_awaiting_task_drops_its_rows() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, float] = MicroBatcher(recorder, max_wait=0)
    wait_held = held(recorder)
    first = asyncio.ensure_future(asyncio.wrap_future(submit(batcher, [1])))
    await asyncio.to_thread(wait_held)

    async def scored(items: list[int]) -> list[float]:
        return await asyncio.wrap_future(submit(batcher, items))

    second = asyncio.ensure_future(scored([2, 3]))
    await asyncio.sleep(0)  # it is queued
    assert batcher.pending == 2
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert batcher.pending == 0
    recorder.gate.set()
    assert await first == [2.0]
    assert recorder.seen() == [1]


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"max_wait": -1}, "-1"),
        ({"max_wait": float("nan")}, "nan"),
        ({"max_wait": True}, "True"),
        ({"max_items": 0}, "0"),
        ({"max_tokens": 2.5}, "2.5"),
        ({"max_pending": -3}, "-3"),
        ({"max_wait": 60.5}, "60.5"),
        ({"max_wait": 1e13}, "10000000000000"),
        ({"workers": 0}, "0"),
        ({"workers": None}, "None"),
    ],
)
def test_bad_limits_are_configuration_errors(kwargs: dict[str, object], shown: str) -> None:
    with pytest.raises(ConfigurationError, match=shown):
        MicroBatcher(Recorder(), **kwargs)  # type: ignore[arg-type]


async def test_request_batcher_scores_pairs_through_score_pairs() -> None:
    calls: list[list[tuple[str, str]]] = []

    def score_pairs(queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        pairs = list(zip(queries, documents, strict=True))
        calls.append(pairs)
        return [float(len(q) + len(d)) for q, d in pairs]

    batcher = RequestBatcher(score_pairs, max_wait=0.01, max_tokens=20, window=10)
    assert batcher.workers == 1  # no local runner: one micro-batch at a time
    assert RequestBatcher(score_pairs, workers=3).workers == 3
    assert batcher.cost("q", "x" * 400) == 10  # the estimate stops at the window
    got = await asyncio.gather(batcher.score("ab", ["c", "dd"]), batcher.score("q", ["e" * 30]))
    assert list(got) == [[3.0, 4.0], [31.0]]
    assert await batcher.score("q", []) == []
    assert batcher.requests == 2 and batcher.pending_pairs == 0
    assert all(sum(batcher.cost(q, d) for q, d in call) <= 20 or len(call) == 1 for call in calls)


async def test_request_batcher_scores_whole_requests_alone_and_bounds_their_pairs() -> None:
    groups: list[list[tuple[object, str, list[str]]]] = []
    gate = threading.Event()

    def score_groups(
        batch: Sequence[tuple[object, str, Sequence[str]]],
    ) -> list[tuple[list[float], Usage | None]]:
        groups.append([(scorer, query, list(docs)) for scorer, query, docs in batch])
        gate.wait(10)
        if "bad" in batch[0][2]:
            raise ValueError("bad request")
        return [([float(len(d)) for d in docs], Usage(tokens=len(docs))) for _, _, docs in batch]

    def unused(queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        raise AssertionError("whole requests never go through score_pairs")

    batcher = RequestBatcher(
        unused, max_tokens=5, max_pending=6, score_groups=score_groups, whole_requests=True
    )
    assert batcher.workers == REQUEST_WORKERS
    big = asyncio.ensure_future(batcher.score_counted("q", ["x" * 40] * 4, scorer="s"))
    bad = asyncio.ensure_future(batcher.score_counted("q", ["bad"]))
    await asyncio.sleep(0.05)
    assert batcher.pending_pairs == 5  # queued or being scored, until answered
    with pytest.raises(Overloaded):
        await batcher.score("q", ["a", "b"])  # 7 pairs would pass max_pending
    gate.set()
    assert await big == ([40.0] * 4, Usage(tokens=4))
    with pytest.raises(ValueError, match="bad request"):
        await bad
    # Each request whole, one a call, though its estimate is far past max_tokens.
    assert sorted(len(g[0][2]) for g in groups) == [1, 4] and all(len(g) == 1 for g in groups)
    assert batcher.pending_pairs == 0 and batcher.requests == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_with_an_empty_batcher_of_its_own() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, float] = MicroBatcher(recorder, max_wait=0)
    wait_held = held(recorder)
    submit(batcher, [1])
    wait_held()  # the parent's worker is busy, holding the batcher's state, when it forks
    queued = submit(batcher, [2])
    with warnings.catch_warnings():  # 3.12+ warns of fork in a threaded process: the point
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: the parent's worker does not exist here
        recorder.gate.set()
        ok = False
        try:
            ok = submit(batcher, [5]).result(timeout=10) == [10.0] and batcher.pending == 0
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    recorder.gate.set()
    assert os.waitstatus_to_exitcode(status) == 0
    assert queued.result(timeout=30) == [4.0]
