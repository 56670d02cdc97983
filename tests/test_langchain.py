"""The LangChain adapter over a table reranker: copies, order, threshold, async, pipeline."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document  # noqa: E402
from pydantic import ValidationError  # noqa: E402

import milvus_rerank.langchain  # noqa: E402
from milvus_rerank import CohereReranker  # noqa: E402
from milvus_rerank.langchain import RerankCompressor, RerankCrossEncoder  # noqa: E402
from tests.conftest import ScoreTableReranker  # noqa: E402

TABLE = {"alpha": 0.2, "beta": 0.9, "gamma": 0.5, "delta": 0.1}


def docs() -> list[Document]:
    return [
        Document(page_content=t, metadata={"pk": i, "nested": {"tags": [t]}}, id=f"id-{i}")
        for i, t in enumerate(TABLE)
    ]


def test_compress_reorders_copies_and_scores() -> None:
    inputs = docs()
    before = copy.deepcopy(inputs)
    out = RerankCompressor(reranker=ScoreTableReranker(TABLE), top_n=3).compress_documents(
        inputs, "q"
    )
    assert [d.page_content for d in out] == ["beta", "gamma", "alpha"]
    assert [d.id for d in out] == ["id-1", "id-2", "id-0"]
    assert [d.metadata["relevance_score"] for d in out] == [0.9, 0.5, 0.2]
    assert out[0].metadata["nested"] == {"tags": ["beta"]}
    out[0].metadata["nested"]["tags"].append("changed")
    assert inputs == before  # nothing mutated, nested metadata included


async def test_async_path_awaits_arerank() -> None:
    reranker = ScoreTableReranker(TABLE)
    compressor = RerankCompressor(reranker=reranker, top_n=2, score_key="score")
    out = await compressor.acompress_documents(docs(), "q")
    assert [(d.page_content, d.metadata["score"]) for d in out] == [("beta", 0.9), ("gamma", 0.5)]


def test_threshold_and_top_none() -> None:
    compressor = RerankCompressor(
        reranker=ScoreTableReranker(TABLE), top_n=None, score_threshold=0.2
    )
    assert [d.page_content for d in compressor.compress_documents(docs(), "q")] == [
        "beta",
        "gamma",
        "alpha",
    ]


def test_empty_input_and_documents_without_id() -> None:
    compressor = RerankCompressor(reranker=ScoreTableReranker(TABLE))
    assert compressor.compress_documents([], "q") == []
    out = compressor.compress_documents([Document(page_content="beta")], "q")
    assert out[0].id is None and out[0].metadata == {"relevance_score": 0.9}


def test_misspelt_or_bad_options_are_errors() -> None:
    with pytest.raises(ValidationError, match="topn"):
        RerankCompressor(reranker=ScoreTableReranker(), topn=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="top_n"):
        RerankCompressor(reranker=ScoreTableReranker(), top_n=0)


def test_works_in_a_document_compressor_pipeline() -> None:
    from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline

    pipeline = DocumentCompressorPipeline(
        transformers=[RerankCompressor(reranker=ScoreTableReranker(TABLE), top_n=2)]
    )
    assert [d.page_content for d in pipeline.compress_documents(docs(), "q")] == ["beta", "gamma"]


def test_cross_encoder_drops_into_langchains_reranker() -> None:
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker

    encoder = RerankCrossEncoder(ScoreTableReranker(TABLE))
    assert encoder.score([("q", "gamma"), ("other", "beta"), ("q", "alpha")]) == [0.5, 0.9, 0.2]
    reranker = CrossEncoderReranker(model=encoder, top_n=2)
    assert [d.page_content for d in reranker.compress_documents(docs(), "q")] == ["beta", "gamma"]


def test_one_way_to_wrap_a_provider() -> None:
    compressor = RerankCompressor(reranker=CohereReranker(api_key="sk-secret-value-123"), top_n=4)
    assert compressor.top_n == 4 and compressor.reranker.provider == "cohere"
    assert "sk-secret-value-123" not in repr(compressor)
    # No provider-named shortcuts (CohereRerank, BGERerank...) beside the generic adapter.
    assert sorted(milvus_rerank.langchain.__all__) == ["RerankCompressor", "RerankCrossEncoder"]
    assert not hasattr(milvus_rerank.langchain, "CohereRerank")
