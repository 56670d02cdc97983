"""LangChain adapter: a document compressor and a cross-encoder over any ``Reranker``.

``RerankCompressor`` goes into ``ContextualCompressionRetriever`` (``langchain_classic``) or an
LCEL chain; ``RerankCrossEncoder`` goes into LangChain's own ``CrossEncoderReranker``. Both
only move data between LangChain's types and the reranker: no ranking logic lives here.

What a call consumed and who answered reach LangChain's callbacks as a custom event,
``RERANK_EVENT`` (``on_custom_event`` of a handler; ``astream_events`` shows it as
``on_custom_event`` under the retriever's run): a ``BaseDocumentCompressor`` has no run of its
own and LangChain no rerank callback, and a custom event is the one a component may send.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import ClassVar

from milvus_rerank.core.base import Reranker, RerankResponse, describe_value
from milvus_rerank.core.errors import InvalidInputError, MissingDependencyError
from milvus_rerank.core.results import copy_metadata
from milvus_rerank.integrations.adapter import RerankAdapter
from milvus_rerank.integrations.options import ScoreThreshold, answer_metadata, response_summary
from milvus_rerank.wrappers.fallback import unreranked_error

try:
    from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks
    from langchain_core.cross_encoders import BaseCrossEncoder
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import ConfigDict, field_serializer
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "milvus_rerank.integrations.langchain", "langchain", "langchain-core"
    ) from exc

__all__ = ["RerankCompressor", "RerankCrossEncoder"]

#: The name of the custom callback event each call sends (see ``rerank_event_data``).
RERANK_EVENT = "milvus_rerank.rerank"
#: The ``RERANK_EVENT`` payload: who answered, whether it reranked, usage, failures.
rerank_event_data = response_summary

logger = logging.getLogger(__name__)


class RerankCompressor(RerankAdapter, BaseDocumentCompressor):
    """Rerank retrieved ``Document``s with any ``Reranker`` and keep the best.

    Returns new documents, best first, with ``page_content``, ``id`` and a copy of the
    metadata, plus the rerank score under ``score_key``, who answered (the reranker's label,
    ``RERANKED_BY_KEY``) and ``RERANKED_KEY`` (True); the input documents are untouched. With
    a ``FallbackReranker(..., fail_open=True)`` whose rerankers all failed, the documents
    keep their input order (cut to ``top_n``, ``score_threshold`` not applied: there are no
    rerank scores to compare), ``score_key`` is None and ``RERANKED_KEY`` False. Each call
    also sends ``RERANK_EVENT`` with its ``Usage`` to the ``callbacks`` it is given.
    Nested metadata is deep-copied; a value that cannot be copied at all (a lock, a generator)
    is passed through by reference rather than failing the retrieval (``copy_metadata``).

    ``score_threshold`` is held to the scale of the reranker that answered, one number or one
    per answering label, and options are checked when set, as ``RerankAdapter`` says; its
    WARNINGs go to the ``milvus_rerank.integrations.langchain`` logger.

    Pickling fails at once with the reranker's ``TypeError`` (rerankers hold models, clients
    and keys); ``copy.deepcopy`` works and shares the reranker.

    Example:
        >>> compressor = RerankCompressor(reranker=BGEReranker(), top_n=3)  # doctest: +SKIP
        >>> retriever = ContextualCompressionRetriever(  # doctest: +SKIP
        ...     base_compressor=compressor, base_retriever=vector_store.as_retriever())
    """

    owner: ClassVar[str] = "RerankCompressor"
    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", validate_assignment=True
    )

    reranker: Reranker
    """The reranker that scores (query, document) pairs."""
    top_n: int | None = 3
    """How many documents to keep (None keeps all)."""
    score_threshold: ScoreThreshold = None
    """Drop documents scoring below this, after ``top_n``: one number, held to the answers of
    the reranker's first choice, or one per answering label, e.g. ``{"cohere:rerank-v3.5":
    0.2, "cross-encoder:...": 0.0}`` (see ``options.kept_results``)."""
    score_key: str = "relevance_score"
    """The metadata key of the rerank score."""

    @field_serializer("reranker", when_used="json")
    def _serialize_reranker(self, reranker: Reranker) -> str:
        return repr(reranker)  # settings only, as the LlamaIndex adapter: a repr shows no key

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``, best first; send ``RERANK_EVENT`` to callbacks."""
        docs, texts = _page_contents(documents)
        response = self.reranker.rerank_response(query, texts, top_n=self.top_n)
        if callbacks is not None:
            manager = CallbackManager.configure(inheritable_callbacks=callbacks)
            data = response_summary(response)
            manager.on_custom_event(RERANK_EVENT, data, run_id=manager.parent_run_id)
        return self._documents(docs, response)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async ``compress_documents``, awaiting ``Reranker.arerank_response``."""
        docs, texts = _page_contents(documents)
        response = await self.reranker.arerank_response(query, texts, top_n=self.top_n)
        if callbacks is not None:
            manager = AsyncCallbackManager.configure(inheritable_callbacks=callbacks)
            data = response_summary(response)
            await manager.on_custom_event(RERANK_EVENT, data, run_id=manager.parent_run_id)
        return self._documents(docs, response)

    def _documents(self, docs: list[Document], response: RerankResponse) -> list[Document]:
        out = []
        for result in self.kept(response, logger):
            source = docs[result.index]
            metadata = copy_metadata(source.metadata)
            metadata[self.score_key] = result.score if response.reranked else None
            metadata.update(answer_metadata(response))
            out.append(Document(page_content=source.page_content, metadata=metadata, id=source.id))
        return out


def _page_contents(documents: object) -> tuple[list[Document], list[str]]:
    """The documents as a list, and their texts; anything but a ``Document`` is named."""
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Iterable):
        raise InvalidInputError(
            f"documents must be a sequence of langchain Documents, got {describe_value(documents)}"
        )
    docs = list(documents)
    for position, doc in enumerate(docs):
        if not isinstance(doc, Document):
            raise InvalidInputError(
                f"documents[{position}] must be a langchain Document, got {describe_value(doc)}"
            )
    return docs, [d.page_content for d in docs]


class RerankCrossEncoder(BaseCrossEncoder):
    """LangChain's ``BaseCrossEncoder`` over any ``Reranker``, for its ``CrossEncoderReranker``.

    A cross-encoder must return real scores, and LangChain's ``CrossEncoderReranker`` has no
    way to mark documents unreranked: over a fail-open ``FallbackReranker`` whose rerankers
    all failed, ``score`` raises ``AllRerankersFailedError`` rather than hand it NaN scores.
    Use ``RerankCompressor`` to fail open (it keeps the order and sets ``reranked``).
    """

    def __init__(self, reranker: Reranker) -> None:
        self.reranker = reranker

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """One score per (query, document) pair, in order; pairs are grouped by query.

        Raises:
            AllRerankersFailedError: a fail-open fallback chain answered unreranked.
        """
        by_query: dict[str, list[int]] = defaultdict(list)
        for position, (query, _) in enumerate(text_pairs):
            by_query[query].append(position)
        scores = [0.0] * len(text_pairs)
        for query, positions in by_query.items():
            response = self.reranker.rerank_response(query, [text_pairs[p][1] for p in positions])
            if not response.reranked:
                raise unreranked_error(response)
            for result in response.results:
                scores[positions[result.index]] = result.score
        return scores
