"""rerank_hits over what MilvusClient.search returns, on real Milvus Lite and on plain dicts."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from milvus_rerank import InvalidInputError
from milvus_rerank.integrations.milvus import arerank_hits, rerank_hits
from tests.conftest import ScoreTableReranker

TABLE = {"alpha": 0.2, "beta": 0.9, "gamma": 0.5}


def hits(texts: list[str]) -> list[dict[str, object]]:
    return [
        {"id": i, "distance": 0.1 * i, "entity": {"text": t, "tag": [i]}}
        for i, t in enumerate(texts)
    ]


def test_reorders_keeps_distance_and_copies() -> None:
    results = [hits(["alpha", "beta", "gamma"])]
    before = copy.deepcopy(results)
    out = rerank_hits(ScoreTableReranker(TABLE), "q", results, top_n=2)
    assert [(h["id"], h["rerank_score"], h["distance"]) for h in out[0]] == [
        (1, 0.9, 0.1),
        (2, 0.5, 0.2),
    ]
    out[0][0]["entity"]["text"] = "changed"
    assert results == before


def _mutables(value: Any) -> list[Any]:
    """Every dict, list and set inside ``value``, itself included."""
    found: list[Any] = []
    if isinstance(value, (dict, list, set)):
        found.append(value)
    items = value.values() if isinstance(value, dict) else value
    if isinstance(value, (dict, list, tuple, set)):
        for item in items:
            found += _mutables(item)
    return found


def test_results_share_nothing_mutable_with_the_hits() -> None:
    results = [
        [
            {
                "id": i,
                "distance": 0.1 * i,
                "extra": {"shard": [i]},
                "entity": {"text": t, "tags": [t], "meta": {"k": [1]}, "pair": ([i], "x")},
            }
            for i, t in enumerate(["alpha", "beta", "gamma"])
        ]
    ]
    before = copy.deepcopy(results)
    for out in (
        rerank_hits(ScoreTableReranker(TABLE), "q", results),
        asyncio.run(arerank_hits(ScoreTableReranker(TABLE), "q", results)),
    ):
        assert [h["entity"]["text"] for h in out[0]] == ["beta", "gamma", "alpha"]
        inputs = {id(m) for m in _mutables(results)}
        assert not any(id(m) in inputs for m in _mutables(out))
        for hit in out[0]:
            hit["extra"]["shard"].append(9)
            hit["entity"]["tags"].append("changed")
            hit["entity"]["meta"]["k"].append(2)
            hit["entity"]["pair"][0].append(3)
        assert results == before


def test_uncopyable_entity_values_are_passed_through() -> None:
    lock = threading.Lock()
    results = [[{"id": 1, "distance": 0.5, "entity": {"text": "beta", "lock": lock, "tags": []}}]]
    out = rerank_hits(ScoreTableReranker(TABLE), "q", results)
    assert out[0][0]["entity"]["lock"] is lock
    out[0][0]["entity"]["tags"].append("x")
    assert results[0][0]["entity"]["tags"] == []


def test_no_queries_give_no_results_sync_and_async() -> None:
    reranker = ScoreTableReranker(TABLE)
    assert rerank_hits(reranker, [], []) == []
    assert asyncio.run(arerank_hits(reranker, [], [])) == []
    assert reranker.calls == 0


@pytest.mark.parametrize("top_n", [True, False, 0, 1.5, "2"])
def test_bad_top_n_is_rejected_before_any_rerank(top_n: object) -> None:
    reranker = ScoreTableReranker(TABLE)
    for call in (
        lambda: rerank_hits(reranker, ["q"], [hits(["beta"])], top_n=top_n),  # type: ignore[arg-type]
        lambda: rerank_hits(reranker, [], [], top_n=top_n),  # type: ignore[arg-type]
        lambda: asyncio.run(arerank_hits(reranker, "q", [hits(["beta"])], top_n=top_n)),  # type: ignore[arg-type]
    ):
        with pytest.raises(
            InvalidInputError,
            match=f"top_n must be a positive int or None, got {type(top_n).__name__}",
        ):
            call()
    assert reranker.calls == 0


def test_many_queries_in_order_sync_and_async() -> None:
    results = [hits(["alpha", "beta"]), hits(["gamma", "alpha"]), []]
    out = rerank_hits(ScoreTableReranker(TABLE), ["q1", "q2", "q3"], results)
    assert [[h["entity"]["text"] for h in q] for q in out] == [
        ["beta", "alpha"],
        ["gamma", "alpha"],
        [],
    ]

    again = asyncio.run(arerank_hits(ScoreTableReranker(TABLE), ["q1", "q2", "q3"], results))
    assert again == out


def test_flat_hits_and_custom_fields() -> None:
    flat = [
        [
            {"pk": "a", "distance": 1.0, "body": "beta"},
            {"pk": "b", "distance": 2.0, "body": "gamma"},
        ]
    ]
    out = rerank_hits(ScoreTableReranker(TABLE), "q", flat, text_field="body", score_field="score")
    assert [(h["pk"], h["score"]) for h in out[0]] == [("a", 0.9), ("b", 0.5)]


@pytest.mark.parametrize(
    ("results", "fragment"),
    [
        (
            [[{"id": 7, "distance": 0.1, "entity": {}}]],
            "hit id=7 (results[0][0]) has no 'text' field",
        ),
        (
            [[{"id": 8, "distance": 0.1, "entity": {"text": None}}]],
            "hit id=8 (results[0][0]) field 'text' must be a str",
        ),
        ([["just text"]], "results[0][0] must be a Milvus hit"),
        ([hits(["a"]), hits(["b"])], "got 1 queries for 2 hit lists"),
        ({"id": 1}, "results must be what MilvusClient.search returns"),
    ],
)
def test_bad_hits_are_named(results: object, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        rerank_hits(ScoreTableReranker(TABLE), "q", results)  # type: ignore[arg-type]
    assert fragment in str(info.value)


@pytest.mark.integration
def test_real_milvus_lite_bm25_search_reranked(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    pytest.importorskip("pymilvus")
    from pymilvus import MilvusClient

    from milvus_rerank import BGEReranker
    from milvus_rerank.app.demo import (
        COLLECTION,
        DEMO_QUERY,
        build_demo_collection,
        load_demo_corpus,
    )

    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    client = MilvusClient(str(tmp_path / "hits.db"))
    try:
        build_demo_collection(client, load_demo_corpus())
        found = client.search(
            COLLECTION,
            data=[DEMO_QUERY, "turing test"],
            anns_field="sparse",
            limit=6,
            output_fields=["text"],
            search_params={"metric_type": "BM25"},
        )
    finally:
        client.close()
    reranker = BGEReranker(str(tiny_models["bge"]))
    out = rerank_hits(reranker, [DEMO_QUERY, "turing test"], found, top_n=4)
    for query, original, ranked in zip([DEMO_QUERY, "turing test"], found, out, strict=True):
        texts = [h["entity"]["text"] for h in original]
        expected = reranker.rerank(query, texts, top_n=4)
        assert [h["entity"]["text"] for h in ranked] == [r.text for r in expected]
        # rerank_hits scores its queries concurrently, in shared batches: float noise only.
        assert [h["rerank_score"] for h in ranked] == pytest.approx(
            [r.score for r in expected], abs=1e-5
        )
        by_id = {h["id"]: h["distance"] for h in original}
        assert all(h["distance"] == by_id[h["id"]] for h in ranked)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"text_field": ""}, "text_field must be a field name, got str ''"),
        ({"score_field": None}, "score_field must be a field name, got NoneType None"),
        ({"queries": 7}, "queries must be a str or a list of str, got int 7"),
    ],
)
def test_bad_fields_and_queries_are_named(kwargs: dict[str, Any], fragment: str) -> None:
    call: dict[str, Any] = {"queries": "q", **kwargs}
    queries = call.pop("queries")
    with pytest.raises(InvalidInputError) as info:
        rerank_hits(ScoreTableReranker(TABLE), queries, [hits(["beta"])], **call)
    assert fragment in str(info.value)
