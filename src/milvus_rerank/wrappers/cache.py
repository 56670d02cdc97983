"""``CachedReranker``: any reranker, with the scores it computed remembered (opt-in, bounded).

Retrieval often reranks the same documents for the same query again (a user paging, retries,
an agent asking twice); a cached score costs nothing, where an API call costs money and a
local one compute. Concurrent misses of one key share one upstream call (``flights``).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from typing_extensions import Self

from milvus_rerank.core.base import Reranker, RerankResponse, rank, validate_request
from milvus_rerank.core.checks import positive_number
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.forks import after_fork
from milvus_rerank.core.results import RerankResult, Usage
from milvus_rerank.wrappers.flights import Flight, running_loop

__all__ = ["CachedReranker"]

#: Key of one cached score: the wrapped reranker's settings, the query, the document.
_Key = tuple[str, str, str]
#: A kept score, and the reranker whose score it is (a chain's member that answered).
_Scored = tuple[float, Reranker]


@dataclass(frozen=True, eq=False)
class _Unkept:
    """An answer not kept (a later member's, or a fail-open one) and the documents it ranks."""

    response: RerankResponse
    documents: list[str]


@dataclass(eq=False)
class _Call:
    """One call's documents and what is known so far of each distinct one."""

    settings: str
    query: str
    docs: list[str]
    top_n: int | None
    scored: dict[str, _Scored] = field(default_factory=dict)
    unkept: dict[str, _Unkept] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    counts: Counter[str] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = Counter(self.docs)  # each distinct document, once, in order of first place

    @property
    def unique(self) -> list[str]:
        return list(self.counts)

    def pending(self) -> list[str]:
        return [d for d in self.counts if d not in self.scored and d not in self.unkept]


@dataclass(eq=False)
class _Claim:
    """What one look-up gave a call: documents to score, flights it leads, flights to wait on."""

    lead: list[str] = field(default_factory=list)
    own: dict[str, Flight] = field(default_factory=dict)
    waits: dict[str, Flight] = field(default_factory=dict)


class CachedReranker(Reranker):
    """Wraps ``reranker`` so that a (query, document) it scored before is not scored again.

    A score is kept under the wrapped reranker's settings (its ``repr``: class, model,
    instruction and every other public setting, never a secret), the query and the document,
    so it is never returned under other settings. The cache is bounded (least recently used
    first out past ``max_entries``), thread-safe, and counts ``hits`` (documents answered with
    a kept score: from it, or from a concurrent call's clean answer), ``misses`` (documents
    scored) and ``coalesced`` (documents answered by a concurrent call's scoring). A call's
    ``Usage`` counts only what it scored: nothing when every document was cached. Scores are
    per document (every reranker here is pointwise), so a document scores the same whatever
    the others in its call, and a document given twice is scored once.

    Who answered: a kept score remembers the reranker that gave it, so an answer from the
    cache names it (``answered_by``), as the call that scored it did: over a
    ``FallbackReranker``, its first member, not the chain.

    Concurrent misses: callers that miss the same key at once share one upstream call (single
    flight), threads and coroutines alike; its error reaches every caller that waited and is
    not kept; a waiter that is cancelled leaves the others waiting; a leader that is cancelled
    lets the waiters ask again. A thread does not wait on a coroutine's call (that coroutine
    may need a worker thread of its event loop that waiting threads could hold): it scores on
    its own; a coroutine waits on any call.

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
        positive_number("max_entries", max_entries, owner="CachedReranker", kind=int)
        self.reranker = reranker
        self.max_entries = max_entries
        self.model_name = reranker.model_name
        self.hits = 0
        self.misses = 0
        self.coalesced = 0
        self._entries: OrderedDict[_Key, _Scored] = OrderedDict()
        self._flights: dict[_Key, Flight] = {}
        self._lock = threading.Lock()
        _instances.add(self)

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

    # -- ranking ---------------------------------------------------------------------------

    def rerank_response(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> RerankResponse:
        """The call's ranking: cached scores, and the rest scored by the wrapped reranker.

        Raises:
            InvalidInputError, ProviderError: as the wrapped reranker's ``rerank_response``
                (also when a concurrent call it waited on raised it).
        """
        query, docs, top_n = validate_request(query, documents, top_n)
        if not docs:
            return RerankResponse([], Usage(), self)
        call = _Call(repr(self.reranker), query, docs, top_n)
        while pending := call.pending():
            claim = self._claim(call, pending, asynchronous=False)
            if claim.lead:
                try:
                    response = self.reranker.rerank_response(query, claim.lead)
                except BaseException as exc:
                    self._abort(call, claim, exc)
                    raise
                self._settle(call, claim, response)
            for doc, flight in claim.waits.items():
                flight.wait()
                self._take(call, doc, flight)
        answer = self._answer(call)
        if answer is not None:
            return answer
        whole = self.reranker.rerank_response(query, call.unique)
        return _expanded(call, _Unkept(whole, call.unique), call.usage + whole.usage)

    async def arerank_response(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> RerankResponse:
        """Async ``rerank_response``."""
        query, docs, top_n = validate_request(query, documents, top_n)
        if not docs:
            return RerankResponse([], Usage(), self)
        call = _Call(repr(self.reranker), query, docs, top_n)
        while pending := call.pending():
            claim = self._claim(call, pending, asynchronous=True)
            if claim.lead:
                try:
                    response = await self.reranker.arerank_response(query, claim.lead)
                except BaseException as exc:
                    self._abort(call, claim, exc)
                    raise
                self._settle(call, claim, response)
            for doc, flight in claim.waits.items():
                await flight.until_settled()
                self._take(call, doc, flight)
        answer = self._answer(call)
        if answer is not None:
            return answer
        whole = await self.reranker.arerank_response(query, call.unique)
        return _expanded(call, _Unkept(whole, call.unique), call.usage + whole.usage)

    def _claim(self, call: _Call, pending: list[str], *, asynchronous: bool) -> _Claim:
        """Sort ``pending`` into cached (recorded now), in flight elsewhere, and to score here.

        A document to score gets a flight of this call's, unless another caller's flight
        holds its key that this caller may not wait on (a thread, on a coroutine's flight).
        """
        claim = _Claim()
        loop = running_loop() if asynchronous else None
        with self._lock:
            for doc in pending:
                key = (call.settings, call.query, doc)
                scored = self._entries.get(key)
                flight = self._flights.get(key)
                if scored is not None:
                    self._entries.move_to_end(key)
                    call.scored[doc] = scored
                    self.hits += call.counts[doc]
                elif flight is not None and (asynchronous or flight.thread_may_wait):
                    claim.waits[doc] = flight
                else:
                    claim.lead.append(doc)
                    if flight is None:
                        claim.own[doc] = self._flights[key] = Flight(loop)
            self.misses += len(claim.lead)
        return claim

    def _settle(self, call: _Call, claim: _Claim, response: RerankResponse) -> None:
        """Record this call's answer and settle the flights it led (aborted if that fails)."""
        try:
            outcomes = self._record(call, claim, response)
        except BaseException as exc:
            self._abort(call, claim, exc)
            raise
        self._release(call, claim)
        for doc, flight in claim.own.items():
            flight.settle(outcomes[doc])

    def _record(
        self, call: _Call, claim: _Claim, response: RerankResponse
    ) -> dict[str, _Scored | _Unkept]:
        """Each led document's outcome, recorded in ``call``; the clean ones kept."""
        call.usage += response.usage
        scored = _kept_scores(response, claim.lead)
        if not scored:
            unkept = _Unkept(response, claim.lead)
            call.unkept.update(dict.fromkeys(claim.lead, unkept))
            return dict.fromkeys(claim.lead, unkept)
        call.scored.update(scored)
        with self._lock:
            for doc, kept in scored.items():
                key = (call.settings, call.query, doc)
                self._entries[key] = kept
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return dict(scored)

    def _abort(self, call: _Call, claim: _Claim, error: BaseException) -> None:
        """Settle the flights a failed leader held: its error, or abandoned when cancelled.

        Cancellation or an interrupt belongs to the leader alone: the waiters ask again.
        """
        self._release(call, claim)
        for flight in claim.own.values():
            if isinstance(error, Exception):
                flight.settle(error=error)
            else:
                flight.settle(abandoned=True)

    def _release(self, call: _Call, claim: _Claim) -> None:
        """Take the flights this call led out of the table (before they are settled)."""
        with self._lock:
            for doc, flight in claim.own.items():
                key = (call.settings, call.query, doc)
                if self._flights.get(key) is flight:
                    del self._flights[key]

    def _take(self, call: _Call, doc: str, flight: Flight) -> None:
        """Record what a concurrent call's flight gave ``doc`` (or raise its error)."""
        if flight.abandoned:
            return  # its leader stopped: the document is asked again
        if flight.error is not None:
            raise flight.error
        with self._lock:
            self.coalesced += 1
            if isinstance(flight.value, tuple):
                self.hits += call.counts[doc]
        if isinstance(flight.value, tuple):
            call.scored[doc] = flight.value
        else:
            call.unkept[doc] = flight.value

    def _answer(self, call: _Call) -> RerankResponse | None:
        """The call's response from what it holds, or None when it must be asked again whole.

        Kept scores throughout are ranked together; one answer not kept that covers the
        call is cut to it; anything else would mix two rerankers' scores.
        """
        if len(call.scored) == len(call.unique):
            scores = [call.scored[d][0] for d in call.docs]
            ranked = rank(call.docs, scores, call.top_n, provider=self.provider)
            answered_by = call.scored[call.docs[ranked[0].index]][1]
            return RerankResponse(ranked, call.usage, answered_by)
        answers = {id(unkept): unkept for unkept in call.unkept.values()}
        if not call.scored and len(answers) == 1:
            return _expanded(call, next(iter(answers.values())), call.usage)
        return None

    # -- the rest of the Reranker surface --------------------------------------------------

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


def _kept_scores(response: RerankResponse, documents: list[str]) -> dict[str, _Scored]:
    """Each document's score, if worth keeping (else none): a clean answer for all of them.

    Clean: reranked, by the first reranker asked (nothing failed before it).
    """
    if not response.reranked or response.failures:
        return {}
    by_place = {r.index: (r.score, response.reranker) for r in response.results}
    if by_place.keys() != set(range(len(documents))):
        return {}
    return {document: by_place[i] for i, document in enumerate(documents)}  # input order


def _expanded(call: _Call, unkept: _Unkept, usage: Usage) -> RerankResponse:
    """An answer that was not kept, as the call's own: its documents, order and ``top_n``."""
    response = unkept.response
    if unkept.documents == call.docs:
        results = response.results[: call.top_n]  # a list of its own (waiters share response)
    elif response.reranked:
        score = {unkept.documents[r.index]: r.score for r in response.results}
        results = rank(
            call.docs,
            [score[d] for d in call.docs],
            call.top_n,
            provider=response.reranker.provider,
        )
    else:  # failed open: the call's own first-stage order, unscored
        count = len(call.docs) if call.top_n is None else min(call.top_n, len(call.docs))
        results = [RerankResult(index=i, score=math.nan, text=call.docs[i]) for i in range(count)]
    return replace(response, results=results, usage=usage)


def _in_order(response: RerankResponse, count: int) -> list[float]:
    """The response's scores back in input order (every document is in it: no top_n)."""
    scores = [0.0] * count
    for result in response.results:
        scores[result.index] = result.score
    return scores


#: Every live cache, so that a forked child drops the flights and lock of its parent's threads.
_instances: weakref.WeakSet[CachedReranker] = weakref.WeakSet()


@after_fork
def _reset_after_fork() -> None:
    for cache in list(_instances):
        cache._lock = threading.Lock()
        cache._flights = {}
