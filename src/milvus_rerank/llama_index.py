"""LlamaIndex adapter: a node postprocessor over any ``Reranker``.

Use it as ``index.as_query_engine(node_postprocessors=[RerankPostprocessor(...)])``. It only
moves data between ``NodeWithScore`` and ``Reranker.rerank``, emits LlamaIndex's rerank
instrumentation events and callback event, and never mutates the nodes it is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .base import Reranker
from .errors import MissingDependencyError
from .results import RerankResult, copy_metadata, scoring_at_least

try:
    from llama_index.core.bridge.pydantic import ConfigDict, Field, field_serializer
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "milvus_rerank.llama_index", "llama-index", "llama-index-core"
    ) from exc

__all__ = [
    "RerankPostprocessor",
]

dispatcher = get_dispatcher(__name__)


class RerankPostprocessor(BaseNodePostprocessor):
    """Rerank retrieved nodes with any ``Reranker``; keep the best ``top_n``.

    Returned nodes are new ``NodeWithScore``s, best first, whose ``score`` is the rerank score;
    the retrieval score moves to the new node's metadata under ``retrieval_score``. Text is read
    like LlamaIndex's own rerankers: ``node.get_content(metadata_mode=MetadataMode.EMBED)``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reranker: Reranker = Field(description="The reranker that scores (query, node) pairs.")
    top_n: int | None = Field(default=3, ge=1, description="Nodes to keep (None keeps all).")
    score_threshold: float | None = Field(
        default=None, description="Drop nodes scoring below this, after top_n."
    )

    @field_serializer("reranker")
    def _serialize_reranker(self, reranker: Reranker) -> str:
        return repr(reranker)  # settings only: a reranker's repr never shows a key

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serializes this postprocessor under."""
        return "MilvusRerankPostprocessor"

    @contextmanager
    def _reranking(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> Iterator[tuple[str, list[NodeWithScore]]]:
        """LlamaIndex's rerank events around one call: yields the query and the list to fill.

        ``ReRankStartEvent`` and the ``RERANKING`` callback event open it; the callback event
        ends with the new nodes on success, and ``ReRankEndEvent`` fires on every path.
        """
        if query_bundle is None:
            raise ValueError("RerankPostprocessor needs the query: pass query_bundle or query_str")
        query = query_bundle.query_str
        model_name = repr(self.reranker)
        top_n = self.top_n or len(nodes)
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_n, model_name=model_name)
        )
        payload: dict[str, Any] = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: model_name,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n,
        }
        new_nodes: list[NodeWithScore] = []
        try:
            with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
                yield query, new_nodes
                event.on_end(payload={EventPayload.NODES: new_nodes})
        finally:
            dispatcher.event(ReRankEndEvent(nodes=new_nodes))

    @dispatcher.span
    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        with self._reranking(nodes, query_bundle) as (query, new_nodes):
            if nodes:
                results = self.reranker.rerank(query, _texts(nodes), top_n=self.top_n)
                new_nodes += self._nodes(nodes, results)
        return new_nodes

    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        with self._reranking(nodes, query_bundle) as (query, new_nodes):
            if nodes:
                results = await self.reranker.arerank(query, _texts(nodes), top_n=self.top_n)
                new_nodes += self._nodes(nodes, results)
        return new_nodes

    def _nodes(
        self, nodes: list[NodeWithScore], results: list[RerankResult]
    ) -> list[NodeWithScore]:
        out = []
        for result in scoring_at_least(results, self.score_threshold):
            source = nodes[result.index]
            # A shallow copy with metadata of its own: text, embedding and relationships are
            # shared read-only, as in the input; deep-copying them costs more than the rerank.
            metadata = copy_metadata(source.node.metadata)
            metadata["retrieval_score"] = source.score
            node = source.node.model_copy(update={"metadata": metadata})
            out.append(NodeWithScore(node=node, score=result.score))
        return out


def _texts(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
