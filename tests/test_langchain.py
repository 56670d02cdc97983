"""The LangChain adapter over a table reranker: copies, order, threshold, async, pipeline."""

from __future__ import annotations

import copy
import math
import pickle
import threading
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document  # noqa: E402
from pydantic import ValidationError  # noqa: E402

import milvus_rerank.langchain  # noqa: E402
from milvus_rerank import CohereReranker, ConfigurationError  # noqa: E402
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


def test_misspelt_options_are_errors() -> None:
    with pytest.raises(ValidationError, match="topn"):
        RerankCompressor(reranker=ScoreTableReranker(), topn=3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("top_n", 0, "top_n must be a positive int or None, got int 0"),
        ("top_n", True, "top_n must be a positive int or None, got bool True"),
        ("top_n", 2.5, "got float 2.5"),
        ("top_n", "3", "got str '3'"),
        (
            "score_threshold",
            math.nan,
            "score_threshold must be a finite number or None, got float nan",
        ),
        ("score_threshold", -math.inf, "got float -inf"),
        ("score_threshold", True, "got bool True"),
        ("score_threshold", "0.5", "got str '0.5'"),
    ],
)
def test_bad_options_are_configuration_errors_naming_the_value(
    option: str, value: object, fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match="RerankCompressor") as info:
        RerankCompressor(reranker=ScoreTableReranker(TABLE), **{option: value})
    assert fragment in str(info.value)
    compressor = RerankCompressor(reranker=ScoreTableReranker(TABLE))
    with pytest.raises(ConfigurationError, match="RerankCompressor"):
        setattr(compressor, option, value)  # checked on assignment too
    assert compressor.top_n == 3 and compressor.score_threshold is None


def test_integral_options_are_normalized() -> None:
    compressor = RerankCompressor(reranker=ScoreTableReranker(TABLE), top_n=2, score_threshold=0)
    assert type(compressor.score_threshold) is float
    out = compressor.compress_documents(docs(), "q")
    assert [d.page_content for d in out] == ["beta", "gamma"]


def test_uncopyable_metadata_is_passed_through_by_reference() -> None:
    lock = threading.Lock()
    pending = (i for i in range(3))
    source = Document(
        page_content="beta", metadata={"lock": lock, "pending": pending, "tags": ["a"]}
    )
    out = RerankCompressor(reranker=ScoreTableReranker(TABLE)).compress_documents([source], "q")
    metadata = out[0].metadata
    assert metadata["lock"] is lock and metadata["pending"] is pending
    assert metadata["tags"] == ["a"] and metadata["tags"] is not source.metadata["tags"]
    metadata["tags"].append("b")
    assert source.metadata["tags"] == ["a"] and set(source.metadata) == {"lock", "pending", "tags"}


class PicklableTable(ScoreTableReranker):
    """A reranker that opts back into pickling: it holds nothing but its table."""

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)


def test_pickling_fails_at_once_naming_the_reranker() -> None:
    compressor = RerankCompressor(reranker=ScoreTableReranker(TABLE))
    with pytest.raises(TypeError, match="RerankCompressor cannot be pickled") as info:
        pickle.dumps(compressor)
    assert "a ScoreTableReranker cannot be pickled" in str(info.value)
    with pytest.raises(TypeError, match="ScoreTableReranker cannot be pickled"):
        pickle.dumps(RerankCrossEncoder(ScoreTableReranker(TABLE)))
    secret = RerankCompressor(reranker=CohereReranker(api_key="sk-secret-value-123"))
    with pytest.raises(TypeError, match="CohereReranker cannot be pickled") as info:
        pickle.dumps(secret)
    assert "sk-secret-value-123" not in str(info.value)


def test_a_picklable_reranker_round_trips_whole() -> None:
    compressor = RerankCompressor(reranker=PicklableTable(TABLE), top_n=2)
    again = pickle.loads(pickle.dumps(compressor))  # noqa: S301 - bytes made just above
    assert isinstance(again.reranker, PicklableTable) and again.top_n == 2
    assert [d.page_content for d in again.compress_documents(docs(), "q")] == ["beta", "gamma"]


def test_deepcopy_shares_the_reranker_and_works() -> None:
    reranker = ScoreTableReranker(TABLE)
    compressor = RerankCompressor(reranker=reranker, top_n=2)
    clone = copy.deepcopy(compressor)
    assert clone is not compressor and clone.reranker is reranker
    assert [d.page_content for d in clone.compress_documents(docs(), "q")] == ["beta", "gamma"]
    updated = compressor.model_copy(update={"top_n": 1}, deep=True)
    assert updated.reranker is reranker and compressor.top_n == 2
    encoder = copy.deepcopy(RerankCrossEncoder(reranker))
    assert encoder.reranker is reranker and encoder.score([("q", "beta")]) == [0.9]


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


def test_model_dump_json_shows_the_reranker_settings_never_its_key() -> None:
    import json

    secret = "sk-do-not-print-0123456789"
    reranker = CohereReranker(api_key=secret, model_name="rerank-v3.5")
    compressor = RerankCompressor(reranker=reranker, top_n=2)
    dumped = json.loads(compressor.model_dump_json())
    assert dumped["reranker"] == repr(reranker) and "rerank-v3.5" in dumped["reranker"]
    assert dumped["top_n"] == 2 and secret not in compressor.model_dump_json()
    assert compressor.model_dump()["reranker"] is reranker  # Python mode keeps the object
    reranker.close()
