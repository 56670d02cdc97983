"""The returned values: ``Usage`` sums and ``RerankResponse`` from ``rerank_response``."""

from __future__ import annotations

import pytest

from milvus_rerank import InvalidInputError
from milvus_rerank.core.base import RerankResponse
from milvus_rerank.core.results import MAX_USAGE_COUNT, RerankResult, Usage
from tests.conftest import ScoreTableReranker


def test_usage_adds_fieldwise_and_keeps_unreported_fields_none() -> None:
    total = Usage(tokens=3, requests=1) + Usage(search_units=1, requests=1) + Usage(tokens=4)
    assert total == Usage(tokens=7, search_units=1, rerank_units=None, requests=2)
    assert Usage() + Usage() == Usage()
    assert total.to_dict() == {"tokens": 7, "search_units": 1, "requests": 2}
    with pytest.raises(TypeError):
        Usage() + 1  # type: ignore[operator]


def test_a_usage_sum_past_the_bound_is_unreported_like_a_field_past_it() -> None:
    top = Usage(tokens=MAX_USAGE_COUNT, search_units=MAX_USAGE_COUNT - 1, rerank_units=5)
    total = top + Usage(tokens=1, search_units=1, rerank_units=1, requests=2)
    assert total == Usage(tokens=None, search_units=MAX_USAGE_COUNT, rerank_units=6, requests=2)
    assert (top + Usage()).tokens == MAX_USAGE_COUNT


def test_rerank_response_carries_the_same_results_and_who_answered() -> None:
    reranker = ScoreTableReranker({"a": 0.1, "b": 0.9, "c": 0.5})
    response = reranker.rerank_response("q", ["a", "b", "c"], top_n=2)
    assert isinstance(response, RerankResponse)
    assert response.results == reranker.rerank("q", ["a", "b", "c"], top_n=2)
    assert response.reranker is reranker
    assert response.reranked is True
    assert response.failures == ()
    assert response.usage == Usage()  # a backend that measures nothing reports nothing
    assert response.answered_by == reranker.label


async def test_arerank_response_and_empty_documents() -> None:
    reranker = ScoreTableReranker({"a": 0.1, "b": 0.9})
    response = await reranker.arerank_response("q", ["a", "b"])
    assert [r.index for r in response.results] == [1, 0]
    empty = reranker.rerank_response("q", [])
    assert empty.results == [] and empty.usage == Usage()
    with pytest.raises(InvalidInputError, match="top_n"):
        reranker.rerank_response("q", ["a"], top_n=0)


def test_label_names_provider_and_model() -> None:
    reranker = ScoreTableReranker({})
    assert reranker.label == reranker.provider
    reranker.model_name = "m-1"
    assert reranker.label == f"{reranker.provider}:m-1"


async def test_a_backend_measuring_usage_sync_only_keeps_it_async() -> None:
    class Counting(ScoreTableReranker):
        def _score_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
            return [0.5] * len(documents), Usage(tokens=7 * len(documents))

    response = await Counting().arerank_response("q", ["a", "b"])
    assert response.usage == Usage(tokens=14)


def test_a_result_is_frozen_where_pymilvus_models_is_not() -> None:
    """Kept on purpose (docs/providers.md, migration table): results are shared values, so
    ``result.score = x`` raises; ``dataclasses.replace(result, score=x)`` makes a new one."""
    import dataclasses

    result = RerankResult(index=0, score=0.5, text="milvus")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.score = 1.0  # type: ignore[misc]
    assert dataclasses.replace(result, score=1.0).score == 1.0
    assert result.score == 0.5
