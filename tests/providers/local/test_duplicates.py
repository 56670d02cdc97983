"""Identical (query, document) pairs in one call are scored once and share the score.

Scored apart, copies of a text land in forward passes of other shapes (size, padding, row
position) and get scores a float32 rounding apart, so "ties in input order" would not hold
for the duplicates hybrid retrieval produces (the same chunk from BM25 and dense search).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("torch")

from milvus_rerank.providers.local.batching import spread, unique_pairs  # noqa: E402
from tests.providers.local.test_passages import FAMILIES, LONG, family_dirs, make  # noqa: E402, F401

QUERY = "what is the capital of france"
COPY = "paris france"
#: One long document, then copies spread so that they fall into passes of other shapes.
DOCUMENTS = [LONG, COPY, "milvus", COPY, COPY, LONG + " x", COPY, COPY, "berlin", COPY, COPY]
COPIES = [i for i, d in enumerate(DOCUMENTS) if d == COPY]


def test_unique_pairs_keeps_first_seen_order_and_counts_tokens_once() -> None:
    queries, documents, where = unique_pairs(["q", "q", "r", "q"], ["a", "b", "a", "a"])
    assert (queries, documents, where) == (["q", "q", "r"], ["a", "b", "a"], [0, 1, 2, 0])
    assert spread(([0.5, 0.25, 0.125], [3, 4, 5]), where) == ([0.5, 0.25, 0.125, 0.5], [3, 4, 5, 0])
    inputs = (["q"] * 3, ["a", "b", "c"])
    assert unique_pairs(*inputs) == (["q"] * 3, ["a", "b", "c"], [0, 1, 2])


@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("batch_size", [2, 3, 4])
@pytest.mark.parametrize("key", FAMILIES)
def test_copies_share_one_score_and_keep_input_order(
    family_dirs: dict[str, Path],  # noqa: F811
    key: str,
    batch_size: int,
    across: bool,
) -> None:
    reranker = make(family_dirs, key, batch_size=batch_size, batch_across_calls=across)
    documents = list(DOCUMENTS)
    response = reranker.rerank_response(QUERY, documents)
    assert documents == DOCUMENTS, "the input is not mutated"
    scores = {r.index: r.score for r in response.results}
    assert len({scores[i] for i in COPIES}) == 1, [scores[i] for i in COPIES]
    order = [r.index for r in response.results if r.index in COPIES]
    assert order == COPIES, "equal texts keep their input order"
    # The tokens of a copy count once: the call costs what its distinct documents cost.
    distinct = list(dict.fromkeys(DOCUMENTS))
    assert response.usage.tokens == reranker.rerank_response(QUERY, distinct).usage.tokens
    # Async and pairwise (serve's path) agree with the sync call, bit for bit.
    again = asyncio.run(reranker.arerank_response(QUERY, documents))
    assert [(r.index, r.score) for r in again.results] == [
        (r.index, r.score) for r in response.results
    ]
    pairs = reranker.score_pairs([QUERY] * len(documents), documents)
    assert [pairs[i] for i in range(len(documents))] == [scores[i] for i in range(len(documents))]
