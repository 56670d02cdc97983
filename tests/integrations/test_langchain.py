"""The LangChain adapter over a table reranker: copies, order, threshold, async, pipeline."""

from __future__ import annotations

import copy
import logging
import math
import pickle
import threading
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from pydantic import ValidationError  # noqa: E402

import milvus_rerank.integrations.langchain  # noqa: E402
from milvus_rerank import (  # noqa: E402
    AllRerankersFailedError,
    CohereReranker,
    ConfigurationError,
    FallbackReranker,
    ProviderUnavailableError,
    RerankResult,
    Usage,
)
from milvus_rerank.cache import CachedReranker  # noqa: E402
from milvus_rerank.integrations.langchain import (  # noqa: E402
    RERANK_EVENT,
    RerankCompressor,
    RerankCrossEncoder,
)
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
    assert out[0].id is None
    assert out[0].metadata == {"relevance_score": 0.9, "reranked_by": "table", "reranked": True}


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
    assert sorted(milvus_rerank.integrations.langchain.__all__) == [
        "RerankCompressor",
        "RerankCrossEncoder",
    ]
    assert not hasattr(milvus_rerank.integrations.langchain, "CohereRerank")


# -- who answered, fail-open and usage -------------------------------------------------------


class Failing(ScoreTableReranker):
    """Always unavailable, like a provider that kept answering 503."""

    provider = "failing"

    def _score(self, query: str, documents: list[str]) -> list[float]:
        self.calls += 1
        raise ProviderUnavailableError("503 from upstream", provider="failing", status_code=503)


class Counting(ScoreTableReranker):
    """A table reranker that reports one token per character it read (as local models count)."""

    provider = "counting"

    def _score_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        tokens = sum(len(query) + len(d) for d in documents)
        return [self.table.get(d, 0.0) for d in documents], Usage(tokens=tokens)

    async def _ascore_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        return self._score_usage(query, documents)


class Recorder(BaseCallbackHandler):
    """Keeps every custom event, and the run id of each retriever that started."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, Any]] = []
        self.retriever_runs: list[Any] = []

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: Any, **kw: Any) -> None:
        self.retriever_runs.append(run_id)

    def on_custom_event(self, name: str, data: Any, *, run_id: Any, **kw: Any) -> None:
        self.events.append((name, data, run_id))


class Fixed(BaseRetriever):
    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        return docs()


def test_a_fallback_answer_is_named_in_each_document() -> None:
    chain = FallbackReranker([Failing(TABLE), ScoreTableReranker(TABLE)])
    out = RerankCompressor(reranker=chain, top_n=2).compress_documents(docs(), "q")
    assert [d.page_content for d in out] == ["beta", "gamma"]
    assert [d.metadata["relevance_score"] for d in out] == [0.9, 0.5]
    assert {d.metadata["reranked_by"] for d in out} == {"table"}
    assert all(d.metadata["reranked"] is True for d in out)


async def test_fail_open_keeps_the_input_order_without_scores() -> None:
    chain = FallbackReranker([Failing(TABLE)], fail_open=True)
    compressor = RerankCompressor(reranker=chain, top_n=3, score_threshold=0.5)
    for out in (
        compressor.compress_documents(docs(), "q"),
        await compressor.acompress_documents(docs(), "q"),
    ):
        assert [d.page_content for d in out] == ["alpha", "beta", "gamma"]  # no threshold
        assert all(d.metadata["relevance_score"] is None for d in out)
        assert all(d.metadata["reranked"] is False for d in out)
        assert out[0].metadata["reranked_by"] == "fallback(failing)"
        assert out[0].metadata["pk"] == 0


def test_usage_and_who_answered_reach_the_callbacks_of_the_retriever_run() -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    chain = FallbackReranker([Failing(TABLE), Counting(TABLE)])
    retriever = ContextualCompressionRetriever(
        base_compressor=RerankCompressor(reranker=chain, top_n=2), base_retriever=Fixed()
    )
    recorder = Recorder()
    out = retriever.invoke("q", config={"callbacks": [recorder]})
    assert [d.page_content for d in out] == ["beta", "gamma"]
    ((name, data, run_id),) = recorder.events
    assert name == RERANK_EVENT == "milvus_rerank.rerank"
    assert data == {
        "answered_by": "counting",
        "reranked": True,
        "usage": {"tokens": sum(1 + len(t) for t in TABLE), "requests": 0},
        "failures": ["ProviderUnavailableError"],
    }
    assert run_id == recorder.retriever_runs[0]  # attached to the retriever's run


async def test_async_callbacks_and_astream_events_see_it_too() -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    retriever = ContextualCompressionRetriever(
        base_compressor=RerankCompressor(reranker=Counting(TABLE), top_n=1),
        base_retriever=Fixed(),
    )
    recorder = Recorder()
    out = await retriever.ainvoke("q", config={"callbacks": [recorder]})
    assert [d.page_content for d in out] == ["beta"]
    assert [(n, d["answered_by"]) for n, d, _ in recorder.events] == [(RERANK_EVENT, "counting")]
    events = [e async for e in retriever.astream_events("q", version="v2")]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert [(e["name"], e["data"]["usage"]["tokens"]) for e in custom] == [
        (RERANK_EVENT, sum(1 + len(t) for t in TABLE))
    ]


def test_no_callbacks_no_event() -> None:
    compressor = RerankCompressor(reranker=Counting(TABLE))
    assert len(compressor.compress_documents(docs(), "q", callbacks=None)) == 3
    recorder = Recorder()
    compressor.compress_documents(docs(), "q", callbacks=[recorder])
    assert [name for name, _, _ in recorder.events] == [RERANK_EVENT]  # a plain handler list


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


class PinsDelta(ScoreTableReranker):
    """A user's subclass overriding ``rerank``/``arerank``: "delta" always comes first."""

    def rerank(self, query: str, documents: Any, top_n: int | None = None) -> list[RerankResult]:
        ranked = sorted(super().rerank(query, documents), key=lambda r: r.text != "delta")
        return ranked[:top_n] if top_n else ranked

    async def arerank(
        self, query: str, documents: Any, top_n: int | None = None
    ) -> list[RerankResult]:
        return self.rerank(query, documents, top_n)


async def test_the_compressor_keeps_an_overridden_rerank() -> None:
    for reranker in (PinsDelta(TABLE), FallbackReranker([PinsDelta(TABLE)])):
        compressor = RerankCompressor(reranker=reranker, top_n=2)
        out = compressor.compress_documents(docs(), "q")
        assert [d.page_content for d in out] == ["delta", "beta"]
        out = await compressor.acompress_documents(docs(), "q")
        assert [d.page_content for d in out] == ["delta", "beta"]


def test_cross_encoder_over_a_fail_open_chain_raises_rather_than_score_nan() -> None:
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker

    down = Failing(TABLE)
    encoder = RerankCrossEncoder(FallbackReranker([down], fail_open=True))
    with pytest.raises(AllRerankersFailedError) as caught:
        encoder.score([("q", "gamma"), ("q", "beta")])
    assert caught.value.labels == (down.label,)
    assert [type(e) for e in caught.value.failures] == [ProviderUnavailableError]
    with pytest.raises(AllRerankersFailedError):
        CrossEncoderReranker(model=encoder, top_n=2).compress_documents(docs(), "q")
    healthy = RerankCrossEncoder(
        FallbackReranker([down, ScoreTableReranker(TABLE)], fail_open=True)
    )
    assert healthy.score([("q", "gamma"), ("q", "beta")]) == [0.5, 0.9]


# -- score_threshold over a fallback chain: held to the scale of whoever answered ------------


class Switchable(ScoreTableReranker):
    """A table reranker (scores in [0, 1], like Cohere's) that is down while ``down`` is set."""

    provider = "cohere"
    model_name = "rerank-v3.5"
    down = False

    def _score(self, query: str, documents: list[str]) -> list[float]:
        if self.down:
            raise ProviderUnavailableError("503 from upstream", provider="cohere", status_code=503)
        return list(super()._score(query, documents))


class Logits(ScoreTableReranker):
    """A local cross-encoder's raw logits: another scale altogether."""

    provider = "cross-encoder"
    model_name = "ms-marco"


LOGITS = {"alpha": -0.18, "beta": -1.24, "gamma": -1.44, "delta": -3.0}


async def compressed(compressor: RerankCompressor) -> list[list[str]]:
    """The kept texts of a sync and of an async call."""
    return [
        [d.page_content for d in compressor.compress_documents(docs(), "q")],
        [d.page_content for d in await compressor.acompress_documents(docs(), "q")],
    ]


async def test_one_threshold_holds_the_first_members_answers_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary = Switchable(TABLE)
    chain = FallbackReranker([primary, Logits(LOGITS)])
    compressor = RerankCompressor(reranker=chain, top_n=None, score_threshold=0.3)
    assert await compressed(compressor) == [["beta", "gamma"]] * 2  # held to 0.3
    primary.down = True
    compressor.top_n = 3
    with caplog.at_level(logging.WARNING, logger="milvus_rerank.integrations.langchain"):
        # was [] twice: the backup's logits were held to the primary's 0.3, silently
        assert await compressed(compressor) == [["alpha", "beta", "gamma"]] * 2
    assert "score_threshold 0.3 not applied: cross-encoder:ms-marco answered" in caplog.text
    assert "cut by top_n alone" in caplog.text
    # the other way: logits up to ~10 would have kept everything; top_n cuts them all the same
    chain = FallbackReranker([primary, Logits({t: 10.0 - i for i, t in enumerate(TABLE)})])
    compressor = RerankCompressor(reranker=chain, top_n=2, score_threshold=0.3)
    assert await compressed(compressor) == [["alpha", "beta"]] * 2


async def test_each_member_can_have_a_threshold_of_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary = Switchable(TABLE)
    chain = FallbackReranker([primary, Logits(LOGITS)])
    per_member = {"cohere:rerank-v3.5": 0.3, "cross-encoder:ms-marco": -1.3}
    compressor = RerankCompressor(reranker=chain, top_n=3, score_threshold=per_member)
    assert compressor.score_threshold == per_member
    assert await compressed(compressor) == [["beta", "gamma"]] * 2
    primary.down = True
    with caplog.at_level(logging.WARNING, logger="milvus_rerank.integrations.langchain"):
        assert await compressed(compressor) == [["alpha", "beta"]] * 2
        compressor.score_threshold = {"cohere:rerank-v3.5": 0.3, "cross-encoder:ms-marco": None}
        assert await compressed(compressor) == [["alpha", "beta", "gamma"]] * 2
    assert (
        "milvus_rerank.integrations.langchain" not in caplog.text
    )  # each threshold was the member's own
    compressor.score_threshold = {"cohere:rerank-v3.5": 0.3}  # the backup left out
    with caplog.at_level(logging.WARNING, logger="milvus_rerank.integrations.langchain"):
        assert await compressed(compressor) == [["alpha", "beta", "gamma"]] * 2
    assert "gives no threshold for cross-encoder:ms-marco" in caplog.text


def test_a_threshold_for_a_label_that_never_answers_is_refused() -> None:
    chain = FallbackReranker([Switchable(TABLE), Logits(LOGITS)])
    with pytest.raises(ConfigurationError, match="'cohere:rerank-3.5', which never answers"):
        RerankCompressor(reranker=chain, score_threshold={"cohere:rerank-3.5": 0.2})
    compressor = RerankCompressor(reranker=chain, score_threshold={"cohere:rerank-v3.5": 0.2})
    with pytest.raises(ConfigurationError, match="'nope'"):
        compressor.score_threshold = {"nope": 0.2}
    with pytest.raises(ConfigurationError, match="'cohere:rerank-v3.5', which never answers"):
        compressor.reranker = Logits(LOGITS)
    assert compressor.reranker is chain
    assert compressor.score_threshold == {"cohere:rerank-v3.5": 0.2}
    with pytest.raises(
        ConfigurationError,
        match=r"score_threshold\['cohere:rerank-v3.5'\] must be a finite number or None, got f",
    ):
        compressor.score_threshold = {"cohere:rerank-v3.5": math.nan}
    with pytest.raises(ConfigurationError, match="keys must be reranker labels"):
        compressor.score_threshold = {0: 0.2}
    cached = CachedReranker(FallbackReranker([Switchable(TABLE), FallbackReranker([chain])]))
    RerankCompressor(reranker=cached, score_threshold={"cross-encoder:ms-marco": 0.0})


async def test_a_cached_answer_names_the_member_that_scored_it() -> None:
    primary = Switchable(TABLE)
    cached = CachedReranker(FallbackReranker([primary, Logits(LOGITS)]))
    compressor = RerankCompressor(reranker=cached, top_n=2, score_threshold=0.3)
    first = compressor.compress_documents(docs(), "q")
    again = compressor.compress_documents(docs(), "q")  # from the cache
    async_again = await compressor.acompress_documents(docs(), "q")
    assert primary.calls == 1
    for out in (first, again, async_again):
        assert [d.page_content for d in out] == ["beta", "gamma"]  # the threshold holds too
        assert {d.metadata["reranked_by"] for d in out} == {"cohere:rerank-v3.5"}  # not fallback(
