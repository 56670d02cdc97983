"""``CachedReranker``: any reranker, with the scores it computed remembered (opt-in, bounded).

Retrieval often reranks the same documents for the same query again (a user paging, retries,
an agent asking twice); a cached score costs nothing, where an API call costs money and a
local one compute.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from typing_extensions import Self

from milvus_rerank.core.base import Reranker, RerankResponse, rank, validate_request
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.results import Usage

__all__ = ["CachedReranker"]

#: Key of one cached score: the wrapped reranker's settings, the query, the document.
_Key = tuple[str, str, str]


class CachedReranker(Reranker):
    """Wraps ``reranker`` so that a (query, document) it scored before is not scored again.

    A score is kept under the wrapped reranker's settings (its ``repr``: class, model,
    instruction and every other public setting, never a secret), the query and the document,
    so it is never returned under other settings. The cache is bounded (least recently used
    first out past ``max_entries``), thread-safe, and counts ``hits`` and ``misses`` (documents
    answered from it, and documents scored). A call's ``Usage`` counts only what was scored:
    nothing when every document was cached. Scores are per document (every reranker here is
    pointwise), so a document scores the same whatever the others in its call.

    Only a clean answer is kept: scores from the wrapped reranker itself or, over a
    ``FallbackReranker``, from its first member with nothing failing before it. An answer from
    a later member (another model, another score scale) or a fail-open answer (no scores) is
    returned as it came, with its ``answered_by``, ``reranked`` and ``failures``, and not
    kept; if some of the call's documents were cached, the whole call is asked of the wrapped
    reranker again, so one ranking never mixes two members' scores.

    Example:
        >>> cached = CachedReranker(CohereReranker(), max_entries=50_000)  # doctest: +SKIP
        >>> cached.rerank("what is milvus?", docs)  # scored by Cohere
        >>> cached.rerank("what is milvus?", docs)  # answered from the cache, no request

    Raises:
        ConfigurationError: ``reranker`` is not a ``Reranker``, or ``max_entries`` is not a
            positive int.
    """

    answers_with = answers_with_async = "response"  # declared capabilities (see Reranker)

    def __init__(self, reranker: Reranker, *, max_entries: int = 10_000) -> None:
        if not isinstance(reranker, Reranker):
            raise ConfigurationError(f"reranker must be a Reranker, got {reranker!r}")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(f"max_entries must be a positive int, got {max_entries!r}")
        self.reranker = reranker
        self.max_entries = max_entries
        self.model_name = reranker.model_name
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[_Key, float] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def provider(self) -> str:  # type: ignore[override]
        """The wrapped reranker's provider."""
        return self.reranker.provider

    @property
    def label(self) -> str:
        """The wrapped reranker's label."""
        return self.reranker.label

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every score (the counters stay)."""
        with self._lock:
            self._entries.clear()

    def _lookup(self, query: str, documents: Sequence[str]) -> tuple[str, list[Any], list[str]]:
        """The settings key, each document's cached score (or None), and the ones to score."""
        settings = repr(self.reranker)
        scores: list[Any] = [None] * len(documents)
        missing: dict[str, None] = {}
        with self._lock:
            for i, document in enumerate(documents):
                key = (settings, query, document)
                score = self._entries.get(key)
                if score is None:
                    missing[document] = None
                else:
                    self._entries.move_to_end(key)
                    scores[i] = score
                    self.hits += 1
            self.misses += len(missing)
        return settings, scores, list(missing)

    def _store(
        self,
        settings: str,
        query: str,
        documents: Sequence[str],
        scores: list[Any],
        fresh: list[str],
        fresh_scores: dict[str, float],
    ) -> list[float]:
        with self._lock:
            for document in fresh:
                self._entries[(settings, query, document)] = fresh_scores[document]
                self._entries.move_to_end((settings, query, document))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return [fresh_scores[d] if s is None else s for d, s in zip(documents, scores, strict=True)]

    def rerank_response(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> RerankResponse:
        """The call's ranking: cached scores, and the rest scored by the wrapped reranker.

        Raises:
            InvalidInputError, ProviderError: as the wrapped reranker's ``rerank_response``.
        """
        query, docs, top_n = validate_request(query, documents, top_n)
        if not docs:
            return RerankResponse([], Usage(), self)
        settings, scores, fresh = self._lookup(query, docs)
        if not fresh:
            return RerankResponse(rank(docs, scores, top_n, provider=self.provider), Usage(), self)
        response = self.reranker.rerank_response(query, fresh)
        if _clean(response):
            return self._combined(settings, query, docs, top_n, scores, fresh, response)
        if fresh == docs:  # nothing cached, nothing repeated: this answer is the call's
            return _cut(response, top_n)
        whole = self.reranker.rerank_response(query, docs, top_n)
        return _with_usage(whole, response.usage + whole.usage)

    async def arerank_response(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> RerankResponse:
        """Async ``rerank_response``."""
        query, docs, top_n = validate_request(query, documents, top_n)
        if not docs:
            return RerankResponse([], Usage(), self)
        settings, scores, fresh = self._lookup(query, docs)
        if not fresh:
            return RerankResponse(rank(docs, scores, top_n, provider=self.provider), Usage(), self)
        response = await self.reranker.arerank_response(query, fresh)
        if _clean(response):
            return self._combined(settings, query, docs, top_n, scores, fresh, response)
        if fresh == docs:
            return _cut(response, top_n)
        whole = await self.reranker.arerank_response(query, docs, top_n)
        return _with_usage(whole, response.usage + whole.usage)

    def _combined(
        self,
        settings: str,
        query: str,
        docs: list[str],
        top_n: int | None,
        scores: list[Any],
        fresh: list[str],
        response: RerankResponse,
    ) -> RerankResponse:
        """A clean answer kept, and merged with the cached scores into one ranking."""
        got = {fresh[r.index]: r.score for r in response.results}
        merged = self._store(settings, query, docs, scores, fresh, got)
        ranked = rank(docs, merged, top_n, provider=self.provider)
        return RerankResponse(ranked, response.usage, response.reranker)

    def _score_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        response = self.rerank_response(query, documents)
        return _in_order(response, len(documents)), response.usage

    async def _ascore_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        response = await self.arerank_response(query, documents)
        return _in_order(response, len(documents)), response.usage

    def _score(self, query: str, documents: list[str]) -> list[float]:
        return self._score_usage(query, documents)[0]

    async def _ascore(self, query: str, documents: list[str]) -> list[float]:
        return (await self._ascore_usage(query, documents))[0]

    def load(self) -> Self:
        """Load the wrapped reranker."""
        self.reranker.load()
        return self

    def input_window(self) -> int | None:
        """The wrapped reranker's token window."""
        return self.reranker.input_window()

    def passages_per_document(self) -> int:
        """The wrapped reranker's windows read per document."""
        return self.reranker.passages_per_document()

    def close(self) -> None:
        """Close the wrapped reranker."""
        self.reranker.close()

    async def aclose(self) -> None:
        """Close the wrapped reranker (async)."""
        await self.reranker.aclose()

    def _repr_fields(self) -> dict[str, Any]:
        return {"reranker": self.reranker, "max_entries": self.max_entries}


def _clean(response: RerankResponse) -> bool:
    """Scores worth keeping: reranked, by the first reranker asked (nothing failed before)."""
    return response.reranked and not response.failures


def _cut(response: RerankResponse, top_n: int | None) -> RerankResponse:
    if top_n is None or top_n >= len(response.results):
        return response
    return replace(response, results=response.results[:top_n])


def _with_usage(response: RerankResponse, usage: Usage) -> RerankResponse:
    return replace(response, usage=usage)


def _in_order(response: RerankResponse, count: int) -> list[float]:
    """The response's scores back in input order (every document is in it: no top_n)."""
    scores = [0.0] * count
    for result in response.results:
        scores[result.index] = result.score
    return scores
