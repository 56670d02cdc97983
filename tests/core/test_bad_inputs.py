"""The bad-input catalogue: every case against every reranker kind and the adapters.

Each case ends in the typed error whose message names the bad value, or in a documented
correct result (a ranking over exactly the given documents); the inputs are unchanged after.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from milvus_rerank import InvalidInputError, Reranker
from tests.conftest import KINDS

LONG = "milvus vector search " * 3000  # ~60k characters, far past any max_length

#: Outside the unit tier: loopback servers, faults or load.
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    query: Any
    documents: Any
    top_n: Any = None
    error: str | None = None  # a fragment the InvalidInputError message must hold


CASES: dict[str, Case] = {
    "empty query": Case("", ["a"], error="non-empty"),
    "whitespace query": Case(" \t\n", ["a"], error="non-empty"),
    "None query": Case(None, ["a"], error="query must be a str, got NoneType None"),
    "int query": Case(7, ["a"], error="query must be a str, got int 7"),
    "bytes query": Case(b"q", ["a"], error="query must be a str, got bytes b'q'"),
    "list query": Case(["q"], ["a"], error="query must be a str, got list ['q']"),
    "surrogate query": Case("q \ud83d", ["a"], error="query is not valid Unicode"),
    "huge query": Case(LONG, ["milvus", "paris"]),
    "documents None": Case("q", None, error="documents must be a sequence"),
    "documents str": Case("q", "abc", error="documents must be a sequence"),
    "documents dict": Case("q", {"text": "a"}, error="documents must be a sequence"),
    "documents set": Case("q", {"a", "b"}, error="documents must be a sequence"),
    "None document": Case("q", ["a", None], error="documents[1] must be a str, got NoneType None"),
    "bytes document": Case("q", [b"a"], error="documents[0] must be a str, got bytes b'a'"),
    "int document": Case("q", ["a", "b", 3], error="documents[2] must be a str, got int 3"),
    "float document": Case("q", [0.5], error="documents[0] must be a str, got float 0.5"),
    "dict document": Case("q", [{"text": "a"}], error="documents[0] must be a str, got dict"),
    "surrogate document": Case(
        "q", ["ok", "bad \udc80"], error="documents[1] is not valid Unicode"
    ),
    "empty list": Case("q", []),
    "tuple of documents": Case("milvus", ("milvus db", "paris")),
    "duplicate documents": Case("milvus", ["same milvus", "other", "same milvus"]),
    "top_n zero": Case("q", ["a"], 0, error="top_n must be a positive int or None, got 0"),
    "top_n negative": Case("q", ["a"], -2, error="top_n must be a positive int or None, got -2"),
    "top_n float": Case(
        "q", ["a"], 1.5, error="top_n must be a positive int or None, got float 1.5"
    ),
    "top_n bool": Case("q", ["a"], True, error="got bool True"),
    "top_n str": Case("q", ["a"], "2", error="got str '2'"),
    "top_n larger than list": Case("milvus", ["milvus", "paris"], 50),
    "top_n one": Case("milvus", ["paris", "milvus", "cat"], 1),
    "emoji": Case("rocket 🚀", ["🚀🚀 launch", "plain text", "👩‍👩‍👧 family"]),
    "right to left": Case("שלום", ["שלום עולם", "مرحبا بالعالم", "hello"]),
    "NUL characters": Case("a\x00b", ["x\x00y", "plain"]),
    "combining marks": Case("cafe\u0301", ["café", "cafe\u0301", "coffee"]),
    "empty document": Case("milvus", ["", "milvus"]),
    "whitespace document": Case("milvus", ["   \n", "milvus"]),
    "document past max length": Case("milvus", [LONG, "milvus short"]),
    "control characters": Case("q\r\n\t", ["\x1b[31mred\x1b[0m", "\x07bell"]),
}


def check_ranking(results: list[Any], documents: list[str], top_n: int | None) -> None:
    n = len(documents)
    assert len(results) == (n if top_n is None else min(top_n, n))
    indices = [r.index for r in results]
    assert len(set(indices)) == len(indices) and all(0 <= i < n for i in indices)
    assert all(r.text == documents[r.index] for r in results)
    assert all(type(r.score) is float for r in results)
    assert all(a.score >= b.score for a, b in zip(results, results[1:], strict=False))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_catalogue(name: str, kind: str, make_reranker: Callable[..., Reranker]) -> None:
    case = CASES[name]
    reranker = make_reranker(kind)
    documents_before = copy.deepcopy(case.documents)
    if case.error is not None:
        with pytest.raises(InvalidInputError) as info:
            reranker.rerank(case.query, case.documents, top_n=case.top_n)
        assert case.error in str(info.value)
    else:
        results = reranker.rerank(case.query, case.documents, top_n=case.top_n)
        check_ranking(results, list(case.documents), case.top_n)
        if name == "duplicate documents":
            same = [r for r in results if r.text == "same milvus"]
            assert same[0].score == pytest.approx(same[1].score, abs=1e-6)
    assert case.documents == documents_before


@pytest.mark.parametrize("kind", KINDS)
async def test_catalogue_async_spot_checks(
    kind: str, make_reranker: Callable[..., Reranker]
) -> None:
    async with make_reranker(kind, fresh=True) as reranker:
        with pytest.raises(InvalidInputError, match=r"documents\[1\]"):
            await reranker.arerank("q", ["a", None])  # type: ignore[list-item]
        assert await reranker.arerank("q", []) == []
        docs = ["milvus", "paris", "milvus db"]
        check_ranking(await reranker.arerank("milvus", docs, top_n=2), docs, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_ten_thousand_documents(kind: str, make_reranker: Callable[..., Reranker]) -> None:
    docs = [f"doc {i} " + ("milvus" if i % 997 == 0 else "x") for i in range(10_000)]
    results = make_reranker(kind).rerank("milvus", docs, top_n=5)
    check_ranking(results, docs, 5)
    if kind not in ("cross-encoder", "bge"):  # the loopback server scores by word overlap
        assert all("milvus" in r.text for r in results)


# -- the adapters ----------------------------------------------------------------------------


def test_langchain_documents_with_nested_metadata_and_no_id(
    make_reranker: Callable[..., Reranker],
) -> None:
    from langchain_core.documents import Document

    from milvus_rerank.integrations.langchain import RerankCompressor

    docs = [
        Document(page_content="milvus db", metadata={"a": {"b": [1, {"c": 2}]}}),
        Document(page_content="paris", metadata={}),
    ]
    before = copy.deepcopy(docs)
    out = RerankCompressor(reranker=make_reranker("vllm"), top_n=None).compress_documents(
        docs, "milvus"
    )
    assert out[0].page_content == "milvus db" and out[0].id is None
    assert out[0].metadata["a"] == {"b": [1, {"c": 2}]}
    assert docs == before
    with pytest.raises(InvalidInputError, match="query"):
        RerankCompressor(reranker=make_reranker("vllm")).compress_documents(docs, "")


def test_llama_index_nodes_without_text_and_without_scores(
    make_reranker: Callable[..., Reranker],
) -> None:
    from llama_index.core.schema import ImageNode, NodeWithScore, TextNode

    from milvus_rerank.integrations.llama_index import RerankPostprocessor

    nodes = [
        NodeWithScore(node=ImageNode(image="aGk=", text=""), score=None),
        NodeWithScore(node=TextNode(text="milvus db"), score=None),
    ]
    before = [n.model_dump() for n in nodes]
    out = RerankPostprocessor(reranker=make_reranker("bge"), top_n=None).postprocess_nodes(
        nodes, query_str="milvus"
    )
    assert len(out) == 2 and {o.node.node_id for o in out} == {n.node.node_id for n in nodes}
    assert all(o.node.metadata["retrieval_score"] is None for o in out)
    assert [n.model_dump() for n in nodes] == before


def test_milvus_hit_without_the_text_field(make_reranker: Callable[..., Reranker]) -> None:
    from milvus_rerank.integrations.milvus import rerank_hits

    hits = [[{"id": 42, "distance": 0.3, "entity": {"title": "no text here"}}]]
    with pytest.raises(InvalidInputError, match="hit id=42"):
        rerank_hits(make_reranker("cohere"), "q", hits)
