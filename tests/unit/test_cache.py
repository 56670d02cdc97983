"""``CachedReranker``: scores reused only under the same settings, bounded, counted, safe."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

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
