"""``CachedReranker``: scores reused only under the same settings, bounded, counted, safe."""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from milvus_rerank import ConfigurationError, Reranker, Usage
from milvus_rerank.wrappers.cache import CachedReranker


class Counting(Reranker):
    """Scores from a word count times ``weight``; records the documents it scores."""

    provider = "counting"

    def __init__(self, weight: float = 1.0, model_name: str = "m") -> None:
        self.weight = weight
        self.model_name = model_name
        self.scored: list[str] = []
        self._lock = threading.Lock()

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        raise AssertionError("the usage hook is used")

    def _score_usage(self, query: str, documents: list[str]) -> tuple[Sequence[float], Usage]:
        with self._lock:
            self.scored += documents
        scores = [self.weight * len(set(query.split()) & set(d.split())) for d in documents]
        return scores, Usage(tokens=sum(len(d.split()) for d in documents), requests=1)

    async def _ascore_usage(
        self, query: str, documents: list[str]
    ) -> tuple[Sequence[float], Usage]:
        return self._score_usage(query, documents)

    def _repr_fields(self) -> dict[str, object]:
        return {"model_name": self.model_name, "weight": self.weight}


DOCS = ["milvus is a vector database", "paris is in france", "a vector of milvus", "cats"]
QUERY = "what is milvus vector"


def test_a_repeated_call_is_answered_from_the_cache_with_no_usage() -> None:
    inner = Counting()
    cached = CachedReranker(inner)
    first = cached.rerank_response(QUERY, DOCS)
    assert first.results == inner.rerank(QUERY, DOCS)
    assert first.usage == Usage(tokens=14, requests=1)
    inner.scored.clear()
    again = cached.rerank_response(QUERY, DOCS, top_n=2)
    assert again.results == first.results[:2] and inner.scored == []
    assert again.usage == Usage()  # nothing scored, nothing counted
    assert (cached.hits, cached.misses) == (4, 4)


def test_only_the_documents_not_cached_are_scored_and_counted() -> None:
    inner = Counting()
    cached = CachedReranker(inner)
    cached.rerank(QUERY, DOCS[:2])
    inner.scored.clear()
    response = cached.rerank_response(QUERY, [*DOCS, DOCS[3]])  # "cats" twice: scored once
    assert inner.scored == DOCS[2:]
    assert response.usage == Usage(tokens=len(DOCS[2].split()) + 1, requests=1)
    assert [r.score for r in response.results] == [
        r.score for r in inner.rerank(QUERY, [*DOCS, DOCS[3]])
    ]
    assert cached.score_pairs([QUERY, "paris"], [DOCS[0], DOCS[1]]) == [3.0, 1.0]


def test_a_score_is_never_reused_under_other_settings_or_another_query() -> None:
    inner = Counting(weight=1.0)
    cached = CachedReranker(inner)
    cached.rerank(QUERY, DOCS)
    inner.weight = 10.0  # other settings: the cached scores do not apply
    inner.scored.clear()
    assert [r.score for r in cached.rerank(QUERY, DOCS)][:1] == [30.0]
    assert inner.scored == DOCS
    inner.scored.clear()
    cached.rerank("paris", DOCS)  # another query
    assert inner.scored == DOCS


def test_the_cache_is_bounded_least_recently_used_first_out() -> None:
    inner = Counting()
    cached = CachedReranker(inner, max_entries=3)
    cached.rerank(QUERY, DOCS[:3])
    cached.rerank(QUERY, DOCS[:1])  # the first is now the most recently used
    cached.rerank(QUERY, DOCS[3:])  # evicts the least recently used: DOCS[1]
    assert len(cached) == 3
    inner.scored.clear()
    cached.rerank(QUERY, DOCS)
    assert inner.scored == [DOCS[1]]
    cached.clear()
    assert len(cached) == 0


async def test_async_and_many_threads_share_one_cache() -> None:
    inner = Counting()
    cached = CachedReranker(inner)
    assert [r.score for r in await cached.arerank(QUERY, DOCS)] == [
        r.score for r in inner.rerank(QUERY, DOCS)
    ]
    inner.scored.clear()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(50):
                cached.rerank(f"{QUERY} {j % 5}", DOCS[i % 4 :])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()

    def join() -> None:
        for thread in threads:
            thread.join(30)

    await asyncio.to_thread(join)
    assert errors == []
    looked_up = 4 + sum(50 * len(DOCS[i % 4 :]) for i in range(8))
    assert len(cached) == 4 + 5 * 4 and cached.hits + cached.misses == looked_up
    # Each of the 20 new (query, document) keys is scored at least once, and at most once by
    # each thread (two threads may miss the same key at the same moment).
    assert 5 * 4 <= len(inner.scored) <= 8 * 5 * 4


def test_it_wraps_any_reranker_and_says_which() -> None:
    inner = Counting(model_name="rerank-x")
    cached = CachedReranker(inner, max_entries=5)
    assert cached.label == "counting:rerank-x" and cached.model_name == "rerank-x"
    assert cached.rerank_response(QUERY, DOCS).answered_by == "counting:rerank-x"
    assert "max_entries=5" in repr(cached) and "rerank-x" in repr(cached)
    with pytest.raises(ConfigurationError, match="0"):
        CachedReranker(inner, max_entries=0)
    with pytest.raises(ConfigurationError, match="'nope'"):
        CachedReranker("nope")  # type: ignore[arg-type]


def test_it_reads_as_much_of_a_document_as_what_it_wraps() -> None:
    class Passages(Counting):
        def input_window(self) -> int:
            return 128

        def passages_per_document(self) -> int:
            return 6

    cached = CachedReranker(Passages())
    assert (cached.input_window(), cached.passages_per_document()) == (128, 6)
    assert CachedReranker(Counting()).passages_per_document() == 1  # the base contract: 1


class Flaky(Counting):
    """A ``Counting`` that fails (a provider outage) while ``down`` is set."""

    def __init__(self, weight: float = 1.0, model_name: str = "m") -> None:
        super().__init__(weight, model_name)
        self.down = False

    def _score_usage(self, query: str, documents: list[str]) -> tuple[Sequence[float], Usage]:
        if self.down:
            from milvus_rerank.core.errors import ProviderUnavailableError

            raise ProviderUnavailableError("down", provider="flaky", status_code=503)
        return super()._score_usage(query, documents)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_fail_open_answer_is_passed_through_and_never_kept(asynchronous: bool) -> None:
    from milvus_rerank import FallbackReranker

    primary = Flaky()
    cached = CachedReranker(FallbackReranker([primary], fail_open=True))

    def call(docs: list[str]) -> object:
        if asynchronous:
            return asyncio.run(cached.arerank_response(QUERY, docs))
        return cached.rerank_response(QUERY, docs)

    primary.down = True
    response = call(DOCS)
    assert not response.reranked and len(response.failures) == 1  # type: ignore[attr-defined]
    assert [r.index for r in response.results] == [0, 1, 2, 3]  # type: ignore[attr-defined]
    assert len(cached) == 0  # no placeholder kept
    primary.down = False
    again = call(DOCS)
    assert again.reranked and again.results == primary.rerank(QUERY, DOCS)  # type: ignore[attr-defined]
    assert len(cached) == 4


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_later_members_scores_are_never_kept_or_mixed_with_the_firsts(
    asynchronous: bool,
) -> None:
    from milvus_rerank import FallbackReranker

    primary, backup = Flaky(weight=100.0, model_name="primary"), Counting(weight=-1.0)
    cached = CachedReranker(FallbackReranker([primary, backup]))

    def call(docs: list[str]) -> object:
        if asynchronous:
            return asyncio.run(cached.arerank_response(QUERY, docs))
        return cached.rerank_response(QUERY, docs)

    call(DOCS[:2])  # the primary's scores, kept
    assert len(cached) == 2
    primary.down = True
    response = call(DOCS)  # two cached, two new: the backup answers the whole call
    assert response.reranker is backup and response.failures  # type: ignore[attr-defined]
    assert response.results == backup.rerank(QUERY, DOCS)  # type: ignore[attr-defined]
    assert len(cached) == 2  # the backup's scores were not kept
    primary.down = False
    back = call(DOCS)
    assert back.results == primary.rerank(QUERY, DOCS)  # type: ignore[attr-defined]
    assert back.reranker is primary and not back.failures  # type: ignore[attr-defined]


class Calls(Counting):
    """A ``Counting`` that counts its upstream calls and, while ``down``, fails them."""

    def __init__(self, weight: float = 1.0, model_name: str = "m") -> None:
        super().__init__(weight, model_name)
        self.calls = 0
        self.down = False

    def _score_usage(self, query: str, documents: list[str]) -> tuple[Sequence[float], Usage]:
        with self._lock:
            self.calls += 1
        if self.down:
            from milvus_rerank.core.errors import ProviderUnavailableError

            raise ProviderUnavailableError("down", provider="calls", status_code=503)
        return super()._score_usage(query, documents)


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("fail_open", [False, True])
def test_a_call_with_duplicates_goes_through_a_failing_primary_once(
    asynchronous: bool, fail_open: bool
) -> None:
    from milvus_rerank import FallbackReranker

    primary, backup = Calls(weight=100.0, model_name="primary"), Calls(weight=-1.0)
    primary.down = True
    if fail_open:
        backup.down = True
    cached = CachedReranker(FallbackReranker([primary, backup], fail_open=fail_open))
    docs = ["milvus x", "paris y", "milvus x"]

    def call() -> Any:
        if asynchronous:
            return asyncio.run(cached.arerank_response("milvus", docs, top_n=3))
        return cached.rerank_response("milvus", docs, top_n=3)

    response = call()
    assert (primary.calls, backup.calls) == (1, 1)  # was (2, 2): the call was asked twice
    assert len(response.failures) == 2 if fail_open else 1
    if fail_open:
        assert not response.reranked
        assert [r.index for r in response.results] == [0, 1, 2]  # the call's own order
        assert all(math.isnan(r.score) for r in response.results)
    else:
        assert response.reranker is backup and response.results == backup.rerank("milvus", docs)
    assert len(cached) == 0


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_cache_hit_names_the_member_whose_scores_it_holds(asynchronous: bool) -> None:
    from milvus_rerank import FallbackReranker

    primary, backup = Calls(model_name="primary"), Calls(model_name="backup")
    cached = CachedReranker(FallbackReranker([primary, backup]))

    def call(docs: list[str]) -> Any:
        if asynchronous:
            return asyncio.run(cached.arerank_response(QUERY, docs))
        return cached.rerank_response(QUERY, docs)

    first = call(DOCS)
    again = call(DOCS)  # all from the cache
    some = call([*DOCS, "new"])  # partly from the cache
    assert primary.calls == 2 and backup.calls == 0
    for response in (first, again, some):
        assert response.reranker is primary and response.answered_by == "counting:primary"
        assert response.reranked and not response.failures
    assert cached.label == "fallback(counting:primary, counting:backup)"  # the wrapper's own


class Gated(Calls):
    """A ``Calls`` that holds every upstream call until ``gate`` is set (sync and async)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def _score_usage(self, query: str, documents: list[str]) -> tuple[Sequence[float], Usage]:
        self.entered.set()
        assert self.gate.wait(10), "the gate never opened"
        return super()._score_usage(query, documents)

    async def _ascore_usage(
        self, query: str, documents: list[str]
    ) -> tuple[Sequence[float], Usage]:
        self.entered.set()
        for _ in range(2000):
            if self.gate.is_set():
                return Calls._score_usage(self, query, documents)
            await asyncio.sleep(0.005)
        raise AssertionError("the gate never opened")


def open_later(upstream: Gated, seconds: float = 0.3) -> threading.Timer:
    timer = threading.Timer(seconds, upstream.gate.set)
    timer.start()
    return timer


def test_concurrent_threads_missing_one_key_share_one_upstream_call() -> None:
    upstream = Gated()
    cached = CachedReranker(upstream)
    results: list[object] = []

    def work() -> None:
        results.append(cached.rerank(QUERY, DOCS))

    threads = [threading.Thread(target=work) for _ in range(20)]
    for thread in threads:
        thread.start()
    open_later(upstream)
    for thread in threads:
        thread.join(10)
    assert upstream.calls == 1  # was 20
    assert len(results) == 20 and all(r == results[0] for r in results)
    assert cached.misses == len(DOCS) and cached.hits == 19 * len(DOCS)


async def test_concurrent_coroutines_missing_one_key_share_one_upstream_call() -> None:
    upstream = Gated()
    cached = CachedReranker(upstream)
    open_later(upstream)
    responses = await asyncio.gather(*(cached.arerank_response(QUERY, DOCS) for _ in range(50)))
    assert upstream.calls == 1  # was 50
    assert all(r.results == responses[0].results for r in responses)
    assert responses[0].usage.requests == 1
    assert sum(r.usage.requests for r in responses) == 1  # only the call that scored pays
    assert cached.coalesced == 49 * len(DOCS)


async def test_a_coroutine_waits_on_a_threads_call_for_the_same_key() -> None:
    upstream = Gated()
    cached = CachedReranker(upstream)
    first = asyncio.ensure_future(asyncio.to_thread(cached.rerank, QUERY, DOCS))
    assert await asyncio.to_thread(upstream.entered.wait, 5)
    others = asyncio.gather(*(cached.arerank(QUERY, DOCS[1:]) for _ in range(10)))
    await asyncio.sleep(0.05)
    upstream.gate.set()
    ranked, coalesced = await first, await others
    assert upstream.calls == 1
    assert all(r == cached.rerank(QUERY, DOCS[1:]) for r in coalesced) and ranked


async def test_a_thread_scores_on_its_own_rather_than_wait_on_a_coroutines_call() -> None:
    """Kept on purpose: a thread blocked on a coroutine's call could hold the worker thread
    that coroutine needs (a backend whose async path runs in the loop's default executor,
    like every local model): a deadlock. Here the executor has one worker; the thread, if it
    waited, would hold it while the coroutine's call queues behind it."""
    import concurrent.futures

    class Local(Calls):  # the async path goes through the loop's default executor
        async def _ascore_usage(
            self, query: str, documents: list[str]
        ) -> tuple[Sequence[float], Usage]:
            await asyncio.sleep(0.1)  # the thread's call takes the only worker meanwhile
            return await asyncio.to_thread(self._score_usage, query, documents)

    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=1)
    )
    upstream = Local()
    cached = CachedReranker(upstream)
    leader = asyncio.ensure_future(cached.arerank(QUERY, DOCS))
    await asyncio.sleep(0)  # the coroutine leads
    try:
        ranked = await asyncio.wait_for(
            asyncio.gather(leader, asyncio.to_thread(cached.rerank, QUERY, DOCS)), 10
        )
    finally:
        for flight in list(cached._flights.values()):  # a regression: free the stuck thread
            flight.settle(abandoned=True)
    assert ranked[0] == ranked[1] and upstream.calls == 2


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_upstream_failure_reaches_every_waiter_and_is_not_kept(asynchronous: bool) -> None:
    from milvus_rerank.core.errors import ProviderUnavailableError

    upstream = Gated()
    upstream.down = True
    cached = CachedReranker(upstream)
    outcomes: list[object] = []

    async def gathered() -> list[object]:
        calls = (cached.arerank(QUERY, DOCS) for _ in range(10))
        return list(await asyncio.gather(*calls, return_exceptions=True))

    def work() -> None:
        try:
            outcomes.append(cached.rerank(QUERY, DOCS))
        except ProviderUnavailableError as exc:
            outcomes.append(exc)

    open_later(upstream)
    if asynchronous:
        outcomes = asyncio.run(gathered())
    else:
        threads = [threading.Thread(target=work) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert upstream.calls == 1 and len(outcomes) == 10
    assert all(isinstance(o, ProviderUnavailableError) for o in outcomes)
    assert len(cached) == 0 and cached._flights == {}
    upstream.down = False
    assert cached.rerank(QUERY, DOCS) == upstream.rerank(QUERY, DOCS)  # asked again, kept
    assert upstream.calls == 3 and len(cached) == len(DOCS)


async def test_a_cancelled_waiter_cancels_no_one_and_a_cancelled_leader_hands_over() -> None:
    upstream = Gated()
    cached = CachedReranker(upstream)
    leader = asyncio.ensure_future(cached.arerank(QUERY, DOCS))
    await asyncio.sleep(0.02)
    waiters = [asyncio.ensure_future(cached.arerank(QUERY, DOCS)) for _ in range(3)]
    await asyncio.sleep(0.02)
    waiters[0].cancel()
    await asyncio.sleep(0.02)
    assert not leader.done() and not any(w.done() for w in waiters[1:])
    leader.cancel()  # its upstream call stops; one waiter leads instead
    await asyncio.sleep(0.02)
    assert not any(w.done() for w in waiters[1:])
    upstream.gate.set()
    ranked = await asyncio.gather(*waiters[1:])
    assert leader.cancelled() and waiters[0].cancelled()
    assert ranked[0] == ranked[1] == upstream.rerank(QUERY, DOCS)
    # the new leader's call and the check above: the cancelled leader's never got through
    assert upstream.calls == 2 and cached._flights == {}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_a_parent_thread_is_scoring_can_rerank() -> None:
    import signal
    import warnings

    upstream = Gated()
    cached = CachedReranker(upstream)
    parent = threading.Thread(target=cached.rerank, args=(QUERY, DOCS))
    parent.start()
    assert upstream.entered.wait(5)  # the parent's flight for every key is in progress
    try:
        with cached._lock, warnings.catch_warnings():  # and the cache's lock is held
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
            if pid == 0:
                ok = False
                try:
                    signal.alarm(30)  # a deadlock ends the child, as a failure
                    upstream.gate.set()
                    ok = cached.rerank(QUERY, DOCS) == upstream.rerank(QUERY, DOCS)
                finally:
                    os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        upstream.gate.set()
        parent.join(10)
