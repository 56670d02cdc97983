"""The LlamaIndex adapter over a table reranker: copies, scores, events, async, serialization."""

from __future__ import annotations

import copy
import logging
import math
import pickle
import threading
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload  # noqa: E402
from llama_index.core.callbacks.base_handler import BaseCallbackHandler  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.schema import (  # noqa: E402
    ImageNode,
    MetadataMode,
    NodeWithScore,
    QueryBundle,
    TextNode,
)

import milvus_rerank.integrations.llama_index  # noqa: E402
from milvus_rerank import (  # noqa: E402
    ConfigurationError,
    FallbackReranker,
    InvalidInputError,
    ProviderUnavailableError,
    RerankResult,
    Usage,
    VoyageReranker,
)
from milvus_rerank.integrations.llama_index import RerankPostprocessor  # noqa: E402
from tests.conftest import ScoreTableReranker  # noqa: E402

TABLE = {"alpha": 0.2, "beta": 0.9, "gamma": 0.5, "delta": 0.1}


def nodes() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata={}), score=0.1 * i)
        for i, t in enumerate(TABLE)
    ]


class Events(BaseEventHandler):
    names: list[str] = []

    @classmethod
    def class_name(cls) -> str:
        return "Events"

    def handle(self, event: object, **kwargs: object) -> None:
        self.names.append(type(event).__name__)


@pytest.fixture
def events() -> Events:
    handler = Events(names=[])
    dispatcher = get_dispatcher("milvus_rerank.integrations.llama_index")
    dispatcher.add_event_handler(handler)
    yield handler
    dispatcher.event_handlers.remove(handler)


def test_reorders_new_nodes_with_rerank_scores() -> None:
    inputs = nodes()
    post = RerankPostprocessor(reranker=ScoreTableReranker(TABLE), top_n=3)
    out = post.postprocess_nodes(inputs, query_str="q")
    assert [n.node.get_content() for n in out] == ["beta", "gamma", "alpha"]
    assert [n.score for n in out] == [0.9, 0.5, 0.2]
    assert [n.node.metadata["retrieval_score"] for n in out] == pytest.approx([0.1, 0.2, 0.0])
    assert [n.node.node_id for n in out] == ["n1", "n2", "n0"]
    assert all("retrieval_score" not in n.node.metadata for n in inputs)  # inputs untouched
    assert [n.score for n in inputs] == pytest.approx([0.0, 0.1, 0.2, 0.3])


async def test_async_path_and_events(events: Events) -> None:
    post = RerankPostprocessor(reranker=ScoreTableReranker(TABLE), top_n=2)
    out = await post.apostprocess_nodes(nodes(), query_bundle=QueryBundle("q"))
    assert [n.node.get_content() for n in out] == ["beta", "gamma"]
    assert events.names.count("ReRankStartEvent") == 1
    assert events.names.count("ReRankEndEvent") == 1


def test_end_event_fires_on_empty_input_and_on_errors(events: Events) -> None:
    post = RerankPostprocessor(reranker=ScoreTableReranker(TABLE))
    assert post.postprocess_nodes([], query_str="q") == []
    with pytest.raises(InvalidInputError):
        post.postprocess_nodes(nodes(), query_str="   ")
    assert events.names.count("ReRankStartEvent") == 2
    assert events.names.count("ReRankEndEvent") == 2


def test_callback_manager_sees_a_reranking_event() -> None:
    seen: list[CBEventType] = []

    class Handler(BaseCallbackHandler):
        def on_event_start(self, event_type, payload=None, event_id="", parent_id="", **kw):  # type: ignore[no-untyped-def]
            seen.append(event_type)
            return event_id

        def on_event_end(self, event_type, payload=None, event_id="", **kw):  # type: ignore[no-untyped-def]
            seen.append(event_type)

        def start_trace(self, trace_id=None):  # type: ignore[no-untyped-def]
            pass

        def end_trace(self, trace_id=None, trace_map=None):  # type: ignore[no-untyped-def]
            pass

    post = RerankPostprocessor(reranker=ScoreTableReranker(TABLE))
    post.callback_manager = CallbackManager([Handler([], [])])
    post.postprocess_nodes(nodes(), query_str="q")
    assert seen == [CBEventType.RERANKING, CBEventType.RERANKING]


def test_threshold_none_scores_and_nodes_without_text() -> None:
    items = [
        NodeWithScore(node=TextNode(text="beta"), score=None),
        NodeWithScore(node=ImageNode(image="aGk=", text=""), score=0.5),
    ]
    post = RerankPostprocessor(reranker=ScoreTableReranker(TABLE), top_n=None, score_threshold=0.5)
    out = post.postprocess_nodes(items, query_str="q")
    assert [n.score for n in out] == [0.9]
    assert out[0].node.metadata["retrieval_score"] is None


def test_serializes_without_secrets() -> None:
    post = RerankPostprocessor(reranker=VoyageReranker(api_key="sk-secret-value-123"), top_n=2)
    data = post.to_dict()
    assert data["class_name"] == "MilvusRerankPostprocessor" and data["top_n"] == 2
    assert "sk-secret-value-123" not in str(data)


def test_missing_query_is_an_error() -> None:
    with pytest.raises(ValueError, match="query"):
        RerankPostprocessor(reranker=ScoreTableReranker()).postprocess_nodes(nodes())


def test_new_nodes_own_their_metadata() -> None:
    source = TextNode(text="beta", id_="n1", metadata={"pk": 1, "tags": ["a"]})
    post = RerankPostprocessor(reranker=ScoreTableReranker(TABLE), top_n=1)
    out = post.postprocess_nodes([NodeWithScore(node=source, score=0.4)], query_str="q")
    assert out[0].node is not source and out[0].node.node_id == "n1"
    out[0].node.metadata["tags"].append("b")
    out[0].node.metadata["pk"] = 2
    assert source.metadata == {"pk": 1, "tags": ["a"]}


def test_no_provider_named_shortcuts() -> None:
    # One way to wrap a provider: RerankPostprocessor(reranker=VoyageReranker(...)).
    assert milvus_rerank.integrations.llama_index.__all__ == ["RerankPostprocessor"]
    assert not hasattr(milvus_rerank.integrations.llama_index, "VoyageRerank")


def test_retrieval_score_stays_out_of_llm_and_embed_text() -> None:
    source = TextNode(
        text="beta",
        metadata={"title": "Beta", "file": "b.txt"},
        excluded_llm_metadata_keys=["file"],
        excluded_embed_metadata_keys=["title"],
        embedding=[0.5, 0.25],
    )
    post = RerankPostprocessor(reranker=ScoreTableReranker(TABLE))
    out = post.postprocess_nodes([NodeWithScore(node=source, score=0.4)], query_str="q")
    node = out[0].node
    for mode in (MetadataMode.LLM, MetadataMode.EMBED):
        assert node.get_content(metadata_mode=mode) == source.get_content(metadata_mode=mode)
    assert "retrieval_score: 0.4" in node.get_content(metadata_mode=MetadataMode.ALL)
    # the caller's node keeps its own lists and embedding
    assert source.excluded_llm_metadata_keys == ["file"]
    assert source.excluded_embed_metadata_keys == ["title"]
    node.embedding.append(1.0)  # type: ignore[union-attr]
    assert source.embedding == [0.5, 0.25]


def test_chained_postprocessors_keep_one_exclusion_and_the_text() -> None:
    first = RerankPostprocessor(reranker=ScoreTableReranker(TABLE), top_n=3)
    second = RerankPostprocessor(reranker=ScoreTableReranker(TABLE), top_n=2)
    inputs = nodes()
    out = second.postprocess_nodes(first.postprocess_nodes(inputs, query_str="q"), query_str="q")
    assert [n.node.get_content(metadata_mode=MetadataMode.LLM) for n in out] == ["beta", "gamma"]
    assert out[0].node.excluded_llm_metadata_keys.count("retrieval_score") == 1
    assert out[0].node.metadata["retrieval_score"] == 0.9  # the first rerank's score
    assert all(n.node.excluded_llm_metadata_keys == [] for n in inputs)


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("top_n", 0, "top_n must be a positive int or None, got int 0"),
        ("top_n", True, "top_n must be a positive int or None, got bool True"),
        ("top_n", "3", "got str '3'"),
        ("score_threshold", math.nan, "finite number or None, got float nan"),
        ("score_threshold", math.inf, "got float inf"),
        ("score_threshold", False, "got bool False"),
        ("score_threshold", "0.5", "got str '0.5'"),
    ],
)
def test_bad_options_are_configuration_errors_naming_the_value(
    option: str, value: object, fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match="RerankPostprocessor") as info:
        RerankPostprocessor(reranker=ScoreTableReranker(TABLE), **{option: value})
    assert fragment in str(info.value)
    post = RerankPostprocessor(reranker=ScoreTableReranker(TABLE))
    with pytest.raises(ConfigurationError, match="RerankPostprocessor"):
        setattr(post, option, value)  # checked on assignment too
    assert post.top_n == 3 and post.score_threshold is None


def test_uncopyable_metadata_is_passed_through_by_reference() -> None:
    lock = threading.Lock()
    source = TextNode(text="beta", metadata={"lock": lock, "nested": {"tags": ["a"]}})
    post = RerankPostprocessor(reranker=ScoreTableReranker(TABLE))
    out = post.postprocess_nodes([NodeWithScore(node=source, score=0.4)], query_str="q")
    metadata = out[0].node.metadata
    assert metadata["lock"] is lock
    metadata["nested"]["tags"].append("b")
    assert source.metadata["nested"] == {"tags": ["a"]}
    assert set(source.metadata) == {"lock", "nested"}


class PicklableTable(ScoreTableReranker):
    """A reranker that opts back into pickling: it holds nothing but its table."""

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)


def test_pickling_fails_at_once_instead_of_dropping_the_reranker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    post = RerankPostprocessor(reranker=VoyageReranker(api_key="sk-secret-value-123"))
    with caplog.at_level(logging.WARNING), pytest.raises(TypeError) as info:
        pickle.dumps(post)
    message = str(info.value)
    assert "RerankPostprocessor cannot be pickled" in message and "VoyageReranker" in message
    assert "sk-secret-value-123" not in message
    assert "Removing unpickleable" not in caplog.text


def test_a_picklable_reranker_round_trips_whole() -> None:
    post = RerankPostprocessor(reranker=PicklableTable(TABLE), top_n=2)
    again = pickle.loads(pickle.dumps(post))  # noqa: S301 - bytes made just above
    assert isinstance(again.reranker, PicklableTable) and again.top_n == 2
    out = again.postprocess_nodes(nodes(), query_str="q")
    assert [n.node.get_content() for n in out] == ["beta", "gamma"]


def test_deepcopy_shares_the_reranker_and_works() -> None:
    reranker = ScoreTableReranker(TABLE)
    post = RerankPostprocessor(reranker=reranker, top_n=2)
    clone = copy.deepcopy(post)
    assert clone is not post and clone.reranker is reranker
    out = clone.postprocess_nodes(nodes(), query_str="q")
    assert [n.node.get_content() for n in out] == ["beta", "gamma"]


# -- who answered, fail-open and usage -------------------------------------------------------


class Failing(ScoreTableReranker):
    """Always unavailable, like a provider that kept answering 503."""

    provider = "failing"

    def _score(self, query: str, documents: list[str]) -> list[float]:
        self.calls += 1
        raise ProviderUnavailableError("503 from upstream", provider="failing", status_code=503)


class Counting(ScoreTableReranker):
    """A table reranker that reports one token per character it read."""

    provider = "counting"

    def _score_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        tokens = sum(len(query) + len(d) for d in documents)
        return [self.table.get(d, 0.0) for d in documents], Usage(tokens=tokens)

    async def _ascore_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        return self._score_usage(query, documents)


TOKENS = sum(1 + len(t) for t in TABLE)


class Kept(BaseEventHandler):
    events: list[Any] = []

    @classmethod
    def class_name(cls) -> str:
        return "Kept"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def kept() -> Kept:
    handler = Kept(events=[])
    dispatcher = get_dispatcher("milvus_rerank.integrations.llama_index")
    dispatcher.add_event_handler(handler)
    yield handler
    dispatcher.event_handlers.remove(handler)


def test_a_fallback_answer_is_named_in_each_node_and_hidden_from_prompts() -> None:
    source = TextNode(
        text="beta", metadata={"title": "Beta"}, excluded_embed_metadata_keys=["title"]
    )
    chain = FallbackReranker([Failing(TABLE), ScoreTableReranker(TABLE)])
    post = RerankPostprocessor(reranker=chain, top_n=2)
    inputs = [*nodes()[:1], NodeWithScore(node=source, score=0.4)]
    out = post.postprocess_nodes(inputs, query_str="q")
    assert [(n.node.get_content(), n.score) for n in out] == [("beta", 0.9), ("alpha", 0.2)]
    node = out[0].node
    assert node.metadata["reranked_by"] == "table" and node.metadata["reranked"] is True
    for mode in (MetadataMode.LLM, MetadataMode.EMBED):
        assert node.get_content(metadata_mode=mode) == source.get_content(metadata_mode=mode)
    assert "reranked_by: table" in node.get_content(metadata_mode=MetadataMode.ALL)


async def test_fail_open_keeps_the_input_order_and_retrieval_scores() -> None:
    chain = FallbackReranker([Failing(TABLE)], fail_open=True)
    post = RerankPostprocessor(reranker=chain, top_n=3, score_threshold=0.5)
    for out in (
        post.postprocess_nodes(nodes(), query_str="q"),
        await post.apostprocess_nodes(nodes(), query_bundle=QueryBundle("q")),
    ):
        assert [n.node.get_content() for n in out] == ["alpha", "beta", "gamma"]
        assert [n.score for n in out] == pytest.approx([0.0, 0.1, 0.2])  # first-stage scores
        assert all(n.node.metadata["reranked"] is False for n in out)
        assert out[0].node.metadata["reranked_by"] == "fallback(failing)"


async def test_end_events_carry_usage_and_who_answered(kept: Kept) -> None:
    chain = FallbackReranker([Failing(TABLE), Counting(TABLE)])
    post = RerankPostprocessor(reranker=chain, top_n=2)
    post.postprocess_nodes(nodes(), query_str="q")
    await post.apostprocess_nodes(nodes(), query_bundle=QueryBundle("q"))
    post.postprocess_nodes([], query_str="q")
    ends = [e for e in kept.events if type(e).__name__ == "ReRankEndEvent"]
    expected = {
        "answered_by": "counting",
        "reranked": True,
        "usage": {"tokens": TOKENS, "requests": 0},
        "failures": ["ProviderUnavailableError"],
    }
    assert [e.tags for e in ends] == [expected, expected, {}]  # nothing to say without nodes


def test_the_callback_end_payload_carries_them_too() -> None:
    ends: list[dict[str, Any]] = []

    class Handler(BaseCallbackHandler):
        def on_event_start(self, event_type, payload=None, event_id="", parent_id="", **kw):  # type: ignore[no-untyped-def]
            return event_id

        def on_event_end(self, event_type, payload=None, event_id="", **kw):  # type: ignore[no-untyped-def]
            ends.append(payload)

        def start_trace(self, trace_id=None):  # type: ignore[no-untyped-def]
            pass

        def end_trace(self, trace_id=None, trace_map=None):  # type: ignore[no-untyped-def]
            pass

    post = RerankPostprocessor(reranker=Counting(TABLE), top_n=1)
    post.callback_manager = CallbackManager([Handler([], [])])
    out = post.postprocess_nodes(nodes(), query_str="q")
    ((payload),) = ends
    assert payload[EventPayload.NODES] == out
    assert payload[EventPayload.ADDITIONAL_KWARGS] == {
        "answered_by": "counting",
        "reranked": True,
        "usage": {"tokens": TOKENS, "requests": 0},
        "failures": [],
    }


class PinsDelta(ScoreTableReranker):
    """A user's subclass overriding ``rerank``/``arerank``: "delta" always comes first."""

    def rerank(self, query: str, documents: Any, top_n: int | None = None) -> list[RerankResult]:
        ranked = sorted(super().rerank(query, documents), key=lambda r: r.text != "delta")
        return ranked[:top_n] if top_n else ranked

    async def arerank(
        self, query: str, documents: Any, top_n: int | None = None
    ) -> list[RerankResult]:
        return self.rerank(query, documents, top_n)


async def test_the_postprocessor_keeps_an_overridden_rerank() -> None:
    for reranker in (PinsDelta(TABLE), FallbackReranker([PinsDelta(TABLE)])):
        post = RerankPostprocessor(reranker=reranker, top_n=2)
        out = post.postprocess_nodes(nodes(), query_str="q")
        assert [n.node.get_content() for n in out] == ["delta", "beta"]
        out = await post.apostprocess_nodes(nodes(), query_str="q")
        assert [n.node.get_content() for n in out] == ["delta", "beta"]


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


async def postprocessed(post: RerankPostprocessor) -> list[list[tuple[str, float | None]]]:
    """The kept (text, score) of a sync and of an async call."""
    outs = [
        post.postprocess_nodes(nodes(), query_str="q"),
        await post.apostprocess_nodes(nodes(), query_bundle=QueryBundle("q")),
    ]
    return [[(n.node.get_content(), n.score) for n in out] for out in outs]


async def test_one_threshold_holds_the_first_members_answers_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary = Switchable(TABLE)
    chain = FallbackReranker([primary, Logits(LOGITS)])
    post = RerankPostprocessor(reranker=chain, top_n=None, score_threshold=0.3)
    assert await postprocessed(post) == [[("beta", 0.9), ("gamma", 0.5)]] * 2
    primary.down = True
    post.top_n = 3
    with caplog.at_level(logging.WARNING, logger="milvus_rerank.integrations.llama_index"):
        # was [] twice: the backup's logits were held to the primary's 0.3, silently
        kept = await postprocessed(post)
    assert kept == [[("alpha", -0.18), ("beta", -1.24), ("gamma", -1.44)]] * 2
    assert "score_threshold 0.3 not applied: cross-encoder:ms-marco answered" in caplog.text


async def test_each_member_can_have_a_threshold_of_its_own() -> None:
    primary = Switchable(TABLE)
    chain = FallbackReranker([primary, Logits(LOGITS)])
    per_member = {"cohere:rerank-v3.5": 0.3, "cross-encoder:ms-marco": -1.3}
    post = RerankPostprocessor(reranker=chain, top_n=3, score_threshold=per_member)
    assert await postprocessed(post) == [[("beta", 0.9), ("gamma", 0.5)]] * 2
    primary.down = True
    assert await postprocessed(post) == [[("alpha", -0.18), ("beta", -1.24)]] * 2
    with pytest.raises(ConfigurationError, match="'cohere:rerank-3.5', which never answers"):
        RerankPostprocessor(reranker=chain, score_threshold={"cohere:rerank-3.5": 0.2})
    with pytest.raises(ConfigurationError, match="'cohere:rerank-v3.5', which never answers"):
        post.reranker = Logits(LOGITS)
    assert post.reranker is chain


async def test_a_cached_answer_names_the_member_that_scored_it() -> None:
    from milvus_rerank.cache import CachedReranker

    primary = Switchable(TABLE)
    cached = CachedReranker(FallbackReranker([primary, Logits(LOGITS)]))
    post = RerankPostprocessor(reranker=cached, top_n=2)
    outs = [
        post.postprocess_nodes(nodes(), query_str="q"),
        post.postprocess_nodes(nodes(), query_str="q"),  # from the cache
        await post.apostprocess_nodes(nodes(), query_str="q"),
    ]
    assert primary.calls == 1
    for out in outs:
        assert [n.node.metadata["reranked_by"] for n in out] == ["cohere:rerank-v3.5"] * 2
