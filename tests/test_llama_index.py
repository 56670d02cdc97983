"""The LlamaIndex adapter over a table reranker: copies, scores, events, async, serialization."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.callbacks import CallbackManager, CBEventType  # noqa: E402
from llama_index.core.callbacks.base_handler import BaseCallbackHandler  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode  # noqa: E402

import milvus_rerank.llama_index  # noqa: E402
from milvus_rerank import InvalidInputError, VoyageReranker  # noqa: E402
from milvus_rerank.llama_index import RerankPostprocessor  # noqa: E402
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
    dispatcher = get_dispatcher("milvus_rerank.llama_index")
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
    assert milvus_rerank.llama_index.__all__ == ["RerankPostprocessor"]
    assert not hasattr(milvus_rerank.llama_index, "VoyageRerank")
