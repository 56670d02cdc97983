"""LlamaIndex adapter: a node postprocessor over any ``Reranker``.

Use it as ``index.as_query_engine(node_postprocessors=[RerankPostprocessor(...)])``. It only
moves data between ``NodeWithScore`` and ``Reranker.rerank_response``, emits LlamaIndex's
rerank instrumentation events and callback event (with who answered and the call's usage),
and never mutates the nodes it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from milvus_rerank.core.base import Reranker, RerankResponse
from milvus_rerank.core.errors import MissingDependencyError
from milvus_rerank.core.results import copy_metadata
from milvus_rerank.integrations.adapter import RerankAdapter
from milvus_rerank.integrations.options import ScoreThreshold, answer_metadata, response_summary

try:
    from llama_index.core.bridge.pydantic import ConfigDict, Field, field_serializer
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "milvus_rerank.integrations.llama_index", "llama-index", "llama-index-core"
    ) from exc

__all__ = ["RerankPostprocessor"]

dispatcher = get_dispatcher(__name__)
logger = logging.getLogger(__name__)

#: The metadata key the retrieval score moves to; kept out of the LLM and embedding text.
RETRIEVAL_SCORE_KEY = "retrieval_score"


class RerankPostprocessor(RerankAdapter, BaseNodePostprocessor):
    """Rerank retrieved nodes with any ``Reranker``; keep the best ``top_n``.

    Returned nodes are new ``NodeWithScore``s, best first, whose ``score`` is the rerank score;
    the retrieval score moves to the new node's metadata under ``retrieval_score``, next to who
    answered (``reranked_by``, the reranker's label) and ``reranked`` (True). These keys are
    excluded from the LLM and embedding text, so ``get_content(MetadataMode.LLM)`` and
    ``(MetadataMode.EMBED)`` read as the input node's did. Text is read like LlamaIndex's own
    rerankers: ``node.get_content(metadata_mode=MetadataMode.EMBED)``.

    With a ``FallbackReranker(..., fail_open=True)`` whose rerankers all failed, the nodes keep
    their input order (cut to ``top_n``; ``score_threshold`` is not applied, there being no
    rerank score) and their retrieval score as ``score``, with ``reranked`` False.

    ``ReRankEndEvent.tags`` and the ``RERANKING`` callback event's end payload (under
    ``EventPayload.ADDITIONAL_KWARGS``) carry ``answered_by``, ``reranked``, ``usage``
    (``Usage.to_dict``) and ``failures`` (error class names) of each call that reached a
    reranker.

    The new node's metadata, its excluded-key lists and its embedding are copies; nested
    metadata is deep-copied, and a value that cannot be copied at all (a lock, a generator) is
    passed through by reference rather than failing the query (``results.copy_metadata``).
    Text and relationships are shared read-only with the input, as LlamaIndex itself does.

    ``score_threshold`` is held to the scale of the reranker that answered, one number or one
    per answering label, and options are checked when set, as ``RerankAdapter`` says; its
    WARNINGs go to the ``milvus_rerank.integrations.llama_index`` logger.

    Pickling fails at once with a ``TypeError`` when the reranker cannot be pickled (none of
    this package's can: they hold models, clients and keys), where LlamaIndex would otherwise
    drop the reranker and unpickle a postprocessor that fails later; ``copy.deepcopy`` works
    and shares the reranker.
    """

    owner: ClassVar[str] = "RerankPostprocessor"
    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True)

    reranker: Reranker = Field(description="The reranker that scores (query, node) pairs.")
    top_n: int | None = Field(default=3, description="Nodes to keep (None keeps all).")
    score_threshold: ScoreThreshold = Field(
        default=None,
        description="Drop nodes scoring below this, after top_n: one number, held to the "
        "answers of the reranker's first choice, or one per answering label ({label: value}).",
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
    ) -> Iterator[tuple[str, list[NodeWithScore], dict[str, Any]]]:
        """LlamaIndex's rerank events around one call: yields the query and what to fill.

        ``ReRankStartEvent`` and the ``RERANKING`` callback event open it; the callback event
        ends with the new nodes on success, and ``ReRankEndEvent`` fires on every path. The
        yielded dict receives the call's summary (``_summary``) for both end events.
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
        summary: dict[str, Any] = {}
        try:
            with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
                yield query, new_nodes, summary
                end: dict[str, Any] = {EventPayload.NODES: new_nodes}
                if summary:
                    end[EventPayload.ADDITIONAL_KWARGS] = summary
                event.on_end(payload=end)
        finally:
            dispatcher.event(ReRankEndEvent(nodes=new_nodes, tags=summary))

    @dispatcher.span
    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        with self._reranking(nodes, query_bundle) as (query, new_nodes, summary):
            if nodes:
                response = self.reranker.rerank_response(query, _texts(nodes), top_n=self.top_n)
                summary.update(response_summary(response))
                new_nodes += self._nodes(nodes, response)
        return new_nodes

    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        with self._reranking(nodes, query_bundle) as (query, new_nodes, summary):
            if nodes:
                response = await self.reranker.arerank_response(
                    query, _texts(nodes), top_n=self.top_n
                )
                summary.update(response_summary(response))
                new_nodes += self._nodes(nodes, response)
        return new_nodes

    def _nodes(self, nodes: list[NodeWithScore], response: RerankResponse) -> list[NodeWithScore]:
        out = []
        for result in self.kept(response, logger):
            source = nodes[result.index]
            node = _scored_copy(source, answer_metadata(response))
            score = result.score if response.reranked else source.score
            out.append(NodeWithScore(node=node, score=score))
        return out


def _scored_copy(source: NodeWithScore, extra: dict[str, Any]) -> Any:
    """A copy of ``source.node`` whose metadata holds the retrieval score and ``extra``.

    Those keys are hidden from prompts and embeddings (the excluded-key lists). A shallow copy
    with metadata, excluded-key lists and embedding of its own: text and relationships are
    shared read-only, as in the input; deep-copying them costs more than the rerank.
    """
    node = source.node
    metadata = copy_metadata(node.metadata)
    added = {RETRIEVAL_SCORE_KEY: source.score, **extra}
    metadata.update(added)
    update: dict[str, Any] = {"metadata": metadata}
    for field in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
        keys = list(getattr(node, field))
        keys += [key for key in added if key not in keys]
        update[field] = keys
    if node.embedding is not None:
        update["embedding"] = list(node.embedding)
    return node.model_copy(update=update)


def _texts(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
