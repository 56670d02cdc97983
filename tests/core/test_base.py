"""The Reranker contract: input checks, ordering, ties, top_n, the pymilvus-model call shape."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from milvus_rerank import (
    FallbackReranker,
    InvalidInputError,
    InvalidResponseError,
    RerankResponse,
    RerankResult,
    Usage,
)
from milvus_rerank.core.base import Reranker
from tests.conftest import ScoreTableReranker


class ListReranker(Reranker):
    """Returns the scores it was built with, whatever the documents."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def _score(self, query: str, documents: list[str]) -> list[float]:
        return self.scores[: len(documents)]


def test_best_first_with_indices_and_texts() -> None:
    reranker = ScoreTableReranker({"a": 0.1, "b": 0.9, "c": 0.5})
    results = reranker.rerank("q", ["a", "b", "c"])
    assert results == [
        RerankResult(index=1, score=0.9, text="b"),
        RerankResult(index=2, score=0.5, text="c"),
        RerankResult(index=0, score=0.1, text="a"),
    ]
    assert all(type(r.score) is float for r in results)


def test_ties_keep_input_order() -> None:
    reranker = ListReranker([0.5, 0.7, 0.5, 0.7, 0.5])
    assert [r.index for r in reranker.rerank("q", list("abcde"))] == [1, 3, 0, 2, 4]


def test_top_n_cuts_and_larger_top_n_returns_all() -> None:
    reranker = ListReranker([0.1, 0.3, 0.2])
    assert [r.index for r in reranker.rerank("q", ["a", "b", "c"], top_n=2)] == [1, 2]
    assert len(reranker.rerank("q", ["a", "b", "c"], top_n=10)) == 3


def test_call_matches_pymilvus_model_shape() -> None:
    reranker = ListReranker([float(i) for i in range(8)])
    docs = [f"d{i}" for i in range(8)]
    assert [r.index for r in reranker("q", docs)] == [7, 6, 5, 4, 3]  # top_k defaults to 5
    assert [r.index for r in reranker("q", docs, top_k=3)] == [7, 6, 5]
    assert [r.text for r in reranker(query="q", documents=docs, top_k=1)] == ["d7"]


DOCS8 = [f"d{i}" for i in range(8)]
BEST_FIRST = [7, 6, 5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize(
    ("top_k", "expected"),
    [
        (0, BEST_FIRST),  # pymilvus-model: `if top_k:` is false, so every document
        (None, BEST_FIRST),
        (8, BEST_FIRST),
        (100, BEST_FIRST),  # above the count: all of them
        (-1, BEST_FIRST[:-1]),  # negative: Python slicing drops the |k| worst
        (-3, BEST_FIRST[:-3]),
        (-8, []),
        (-20, []),
    ],
)
def test_call_treats_top_k_like_pymilvus_model(top_k: int | None, expected: list[int]) -> None:
    reranker = ListReranker([float(i) for i in range(8)])
    results = reranker("q", DOCS8, top_k=top_k)
    assert [r.index for r in results] == expected
    # the same slice pymilvus-model's BGERerankFunction / CrossEncoderRerankFunction take
    order = sorted(range(8), key=lambda i: reranker.scores[i], reverse=True)
    assert [r.index for r in results] == (order[:top_k] if top_k else order)
    assert all(type(r.score) is float for r in results)


@pytest.mark.parametrize("top_k", [1.5, "3", True])
def test_call_refuses_a_top_k_that_is_not_an_int(top_k: object) -> None:
    with pytest.raises(InvalidInputError, match="top_k must be an int or None"):
        ListReranker([1.0])("q", ["a"], top_k=top_k)  # type: ignore[arg-type]


def test_call_still_checks_its_input() -> None:
    with pytest.raises(InvalidInputError, match="documents\\[0\\]"):
        ListReranker([1.0])("q", [None], top_k=0)  # type: ignore[list-item]


def test_empty_documents_never_reach_the_backend() -> None:
    reranker = ScoreTableReranker()
    assert reranker.rerank("q", []) == []
    assert reranker.calls == 0


async def test_arerank_matches_rerank() -> None:
    reranker = ScoreTableReranker({"a": 0.2, "b": 0.4})
    assert await reranker.arerank("q", ["a", "b"], top_n=1) == reranker.rerank(
        "q", ["a", "b"], top_n=1
    )
    assert await reranker.arerank("q", ()) == []


def test_input_is_not_mutated_and_tuples_work() -> None:
    docs = ("b", "a")
    reranker = ScoreTableReranker({"a": 1.0})
    listed = list(docs)
    assert [r.text for r in reranker.rerank("q", listed)] == ["a", "b"]
    assert listed == ["b", "a"]
    assert [r.index for r in reranker.rerank("q", docs)] == [1, 0]


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("", "non-empty"),
        ("   \n\t", "non-empty"),
        (None, "NoneType None"),
        (b"bytes", "bytes b'bytes'"),
        (42, "int 42"),
        (["q"], "list ['q']"),
        ("bad \ud800 surrogate", "lone surrogate"),
    ],
)
def test_bad_query_is_named(query: object, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match="query") as info:
        ScoreTableReranker().rerank(query, ["a"])  # type: ignore[arg-type]
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("documents", "fragment"),
    [
        ("just a string", "documents must be a sequence"),
        (b"bytes", "documents must be a sequence"),
        ({"a": 1}, "documents must be a sequence"),
        (None, "documents must be a sequence"),
        (iter(["a"]), "documents must be a sequence"),
        (["ok", None], "documents[1] must be a str, got NoneType None"),
        (["ok", "fine", 3.5], "documents[2] must be a str, got float 3.5"),
        ([b"raw"], "documents[0] must be a str, got bytes b'raw'"),
        ([{"text": "x"}], "documents[0] must be a str, got dict"),
        (["a", "\udcff"], "documents[1] is not valid Unicode"),
    ],
)
def test_bad_documents_are_named(documents: object, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        ScoreTableReranker().rerank("q", documents)  # type: ignore[arg-type]
    assert fragment in str(info.value)


@pytest.mark.parametrize("top_n", [0, -1, 1.5, "3", True, float("nan")])
def test_bad_top_n_is_named(top_n: object) -> None:
    with pytest.raises(InvalidInputError, match="top_n") as info:
        ScoreTableReranker().rerank("q", ["a"], top_n=top_n)  # type: ignore[arg-type]
    assert repr(top_n) in str(info.value)


def test_bad_input_is_checked_before_empty_short_circuit() -> None:
    with pytest.raises(InvalidInputError):
        ScoreTableReranker().rerank("", [])
    with pytest.raises(InvalidInputError):
        ScoreTableReranker().rerank("q", [], top_n=0)


def test_errors_are_value_errors_for_callers_that_expect_them() -> None:
    with pytest.raises(ValueError):
        ScoreTableReranker().rerank("", ["a"])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_never_rank(bad: float) -> None:
    with pytest.raises(InvalidResponseError, match="non-finite"):
        ListReranker([0.1, bad]).rerank("q", ["a", "b"])


def test_wrong_number_of_scores_never_ranks() -> None:
    with pytest.raises(InvalidResponseError, match="1 scores for 2 documents"):
        ListReranker([0.1]).rerank("q", ["a", "b"])


def test_repr_names_the_class() -> None:
    assert repr(ScoreTableReranker()) == "ScoreTableReranker()"


@given(
    scores=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=40),
    top_n=st.one_of(st.none(), st.integers(min_value=1, max_value=50)),
)
def test_ranking_properties(scores: list[float], top_n: int | None) -> None:
    docs = [f"doc {i}" for i in range(len(scores))]
    results = ListReranker(scores).rerank("q", docs, top_n=top_n)
    indices = [r.index for r in results]
    assert len(results) == (len(docs) if top_n is None else min(top_n, len(docs)))
    assert len(set(indices)) == len(indices)
    assert all(0 <= i < len(docs) for i in indices)
    assert all(r.text == docs[r.index] and r.score == scores[r.index] for r in results)
    for a, b in zip(results, results[1:], strict=False):
        assert a.score > b.score or (a.score == b.score and a.index < b.index)
    # what was cut scores no higher than what was kept
    kept = set(indices)
    if results:
        assert all(scores[i] <= results[-1].score for i in range(len(docs)) if i not in kept)


def test_copy_metadata_is_independent_of_its_source() -> None:
    from milvus_rerank.core.results import copy_metadata

    flat = {"pk": 1, "source": "a.txt", "score": 0.5, "tag": None}
    nested = {"pk": 2, "tags": ["x"], "extra": {"page": 3}}
    flat_copy, nested_copy = copy_metadata(flat), copy_metadata(nested)
    assert flat_copy == flat and flat_copy is not flat
    flat_copy["pk"] = 9
    nested_copy["tags"].append("y")
    nested_copy["extra"]["page"] = 4
    assert flat == {"pk": 1, "source": "a.txt", "score": 0.5, "tag": None}
    assert nested == {"pk": 2, "tags": ["x"], "extra": {"page": 3}}


class Pinned(ScoreTableReranker):
    """A user's subclass that overrides ``rerank``/``arerank``: 'pinned' documents come first."""

    def __init__(self) -> None:
        super().__init__({"pinned": 0.0, "alpha": 0.5, "beta": 0.9})

    def rerank(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> list[RerankResult]:
        ranked = sorted(super().rerank(query, documents), key=lambda r: r.text != "pinned")
        return ranked[:top_n] if top_n else ranked

    async def arerank(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> list[RerankResult]:
        return self.rerank(query, documents, top_n)


PINNED_DOCS = ["alpha", "beta", "pinned"]


def test_rerank_response_keeps_an_overridden_rerank() -> None:
    pinned = Pinned()
    response = pinned.rerank_response("q", PINNED_DOCS, top_n=2)
    assert [r.text for r in response.results] == ["pinned", "beta"]
    assert response.usage == Usage() and response.reranker is pinned and response.reranked
    assert pinned.rerank_response("q", []).results == []
    with pytest.raises(InvalidInputError):
        pinned.rerank_response("", PINNED_DOCS)


async def test_arerank_response_keeps_an_overridden_arerank() -> None:
    response = await Pinned().arerank_response("q", PINNED_DOCS, top_n=1)
    assert [r.text for r in response.results] == ["pinned"]


async def test_a_fallback_keeps_a_member_s_overridden_rerank() -> None:
    chain = FallbackReranker([Pinned()])
    assert [r.text for r in chain.rerank("q", PINNED_DOCS, top_n=1)] == ["pinned"]
    assert [r.text for r in await chain.arerank("q", PINNED_DOCS, top_n=1)] == ["pinned"]


class BothOverridden(Pinned):
    """Overrides ``rerank_response`` too, calling up: neither override loops into the other."""

    def rerank_response(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> RerankResponse:
        response = super().rerank_response(query, documents, top_n)
        return RerankResponse(response.results, Usage(requests=7), self)


def test_overriding_rerank_and_rerank_response_together_does_not_recurse() -> None:
    both = BothOverridden()
    assert [r.text for r in both.rerank("q", PINNED_DOCS)] == ["pinned", "beta", "alpha"]
    response = both.rerank_response("q", PINNED_DOCS)
    assert [r.text for r in response.results] == ["beta", "alpha", "pinned"]
    assert response.usage.requests == 7


# -- capabilities: declared class attributes, and the rule for a subclass that declares none --


class OwnAsync(ScoreTableReranker):
    """Has its own async scoring: the rule declares ``native_async``."""

    async def _ascore(self, query: str, documents: list[str]) -> list[float]:
        return [1.0] * len(documents)


class OwnPairs(ScoreTableReranker):
    """Has its own batched ``score_pairs``: the rule declares ``batching = "pairs"``."""

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        return [0.0] * len(documents)


class BelowPinned(Pinned):
    """Defines nothing: inherits what ``Pinned`` declared."""


def _capabilities(cls: type[Reranker]) -> tuple[str, str, bool, str]:
    return cls.answers_with, cls.answers_with_async, cls.native_async, cls.batching


def test_the_base_declares_the_default_capabilities() -> None:
    assert _capabilities(Reranker) == ("scores", "scores", False, "whole")
    assert _capabilities(ListReranker) == ("scores", "scores", False, "whole")


def test_a_subclass_that_declares_nothing_gets_them_from_what_its_body_defines() -> None:
    assert _capabilities(Pinned) == ("rerank", "rerank", False, "whole")
    assert _capabilities(BelowPinned) == _capabilities(Pinned)
    # An own rerank_response wins over an inherited rerank; arerank_response is not defined.
    assert _capabilities(BothOverridden) == ("response", "rerank", False, "whole")
    assert _capabilities(OwnAsync) == ("scores", "scores", True, "whole")
    assert _capabilities(OwnPairs) == ("scores", "scores", False, "pairs")


def test_the_library_s_rerankers_declare_theirs() -> None:
    from milvus_rerank import CrossEncoderReranker, HTTPReranker
    from milvus_rerank.cache import CachedReranker

    assert _capabilities(FallbackReranker) == ("response", "response", False, "whole")
    assert _capabilities(CachedReranker)[:2] == ("response", "response")
    assert CachedReranker.batching == "whole"
    assert HTTPReranker.native_async and HTTPReranker.batching == "whole"
    assert CrossEncoderReranker.batching == "rows"  # a local model: serve feeds its runner


class DeclaredScores(Pinned):
    """Keeps ``Pinned``'s ``rerank`` but declares that its answers come from its scores."""

    answers_with = "scores"


class DeclaredThreaded(ScoreTableReranker):
    """Has an ``_ascore`` but declares no native async path: usage comes from the sync hook."""

    native_async = False

    async def _ascore(self, query: str, documents: list[str]) -> list[float]:
        raise AssertionError("a declared native_async=False never reaches _ascore")

    def _score_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        return [self.table.get(d, 0.0) for d in documents], Usage(requests=3)


def test_a_declared_capability_is_what_the_base_reads() -> None:
    # The base reads the declaration, not which methods the class overrides: rerank_response
    # scores through the pipeline although the class has its own rerank.
    response = DeclaredScores().rerank_response("q", PINNED_DOCS)
    assert [r.text for r in response.results] == ["beta", "alpha", "pinned"]
    assert [r.text for r in DeclaredScores().rerank("q", PINNED_DOCS)] == [
        "pinned",
        "beta",
        "alpha",
    ]


async def test_a_declared_native_async_is_what_the_base_reads() -> None:
    reranker = DeclaredThreaded({"alpha": 0.5, "beta": 0.9})
    response = await reranker.arerank_response("q", ["alpha", "beta"])
    assert [r.text for r in response.results] == ["beta", "alpha"]
    assert response.usage.requests == 3


def test_an_empty_query_is_refused_through_the_pymilvus_call_shape_too() -> None:
    """pymilvus-model scores an empty query; refused here on purpose (docs/providers.md): it is
    a caller's bug, and every document would score as noise."""
    with pytest.raises(InvalidInputError, match="query.*non-empty"):
        ScoreTableReranker()("", ["a", "b"], top_k=1)


async def test_a_class_with_only_its_own_async_scoring_can_be_made() -> None:
    """Before: ``TypeError`` (abstract ``_score``) although ``_ascore`` makes it native_async."""
    from milvus_rerank import ConfigurationError

    class AsyncOnly(Reranker):
        async def _ascore(self, query: str, documents: list[str]) -> list[float]:
            return [float(len(d)) for d in documents]

    class AsyncOnlyBelow(AsyncOnly):
        """Inherits the async path."""

    for cls in (AsyncOnly, AsyncOnlyBelow):
        reranker = cls()
        assert cls.native_async
        assert [r.text for r in await reranker.arerank("q", ["a", "ccc", "bb"])] == [
            "ccc",
            "bb",
            "a",
        ]
        with pytest.raises(ConfigurationError, match="scores asynchronously only.*arerank"):
            reranker.rerank("q", ["a"])

    class Neither(Reranker):
        """No scoring hook at all: still refused when made."""

    with pytest.raises(TypeError, match="abstract method _score"):
        Neither()  # type: ignore[abstract]
