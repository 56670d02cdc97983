"""The ``Reranker`` base class: one concrete ``rerank`` over one scoring hook per backend."""

from __future__ import annotations

import asyncio
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from typing_extensions import Self

from milvus_rerank.core.checks import describe_value
from milvus_rerank.core.errors import ConfigurationError, InvalidInputError, InvalidResponseError
from milvus_rerank.core.results import RerankResult, Usage

__all__ = [
    "Answers",
    "Batching",
    "MilvusTarget",
    "RerankResponse",
    "Reranker",
    "describe_value",
    "validate_pairs",
]

#: Who runs a server-side rerank Function: a Milvus 2.6+ server, or embedded Milvus Lite.
MilvusTarget = Literal["milvus", "milvus-lite"]
#: Where a reranker's answers come from (``Reranker.answers_with``).
Answers = Literal["scores", "rerank", "response"]
#: How requests of many callers may be scored together (``Reranker.batching``).
Batching = Literal["whole", "pairs", "rows"]
#: Precedence of the answer modes a class inherits: an own ``rerank_response`` wins.
_ANSWERS_ORDER: tuple[Answers, ...] = ("scores", "rerank", "response")


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, got {describe_value(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} is not valid Unicode text (lone surrogate at position {exc.start}): "
            f"{describe_value(value)}"
        ) from None
    return value


def validate_request(
    query: object, documents: object, top_n: object
) -> tuple[str, list[str], int | None]:
    """Check a rerank request and return it normalized: a copied list of documents, an int top_n."""
    query = _check_text(query, "query")
    if not query.strip():
        raise InvalidInputError(f"query must be a non-empty string, got {describe_value(query)}")
    if isinstance(documents, (str, bytes, bytearray, Mapping)) or not isinstance(
        documents, Sequence
    ):
        raise InvalidInputError(
            "documents must be a sequence of str (a list or tuple), "
            f"got {describe_value(documents)}"
        )
    docs = [_check_text(doc, f"documents[{i}]") for i, doc in enumerate(documents)]
    if top_n is not None:
        if isinstance(top_n, bool) or not isinstance(top_n, numbers.Integral):
            raise InvalidInputError(
                f"top_n must be a positive int or None, got {describe_value(top_n)}"
            )
        if top_n < 1:
            raise InvalidInputError(f"top_n must be a positive int or None, got {top_n!r}")
        top_n = int(top_n)
    return query, docs, top_n


def rank(
    documents: list[str], scores: Sequence[float], top_n: int | None, *, provider: str
) -> list[RerankResult]:
    """Order documents by score, best first, ties in input order, cut to ``top_n``."""
    if len(scores) != len(documents):
        raise InvalidResponseError(
            f"{provider} returned {len(scores)} scores for {len(documents)} documents",
            provider=provider,
        )
    values = [float(s) for s in scores]
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise InvalidResponseError(
                f"{provider} returned a non-finite score {value!r} for documents[{i}]",
                provider=provider,
            )
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    if top_n is not None:
        order = order[:top_n]
    return [RerankResult(index=i, score=values[i], text=documents[i]) for i in order]


def validate_pairs(queries: Sequence[str], documents: Sequence[str]) -> tuple[list[str], list[str]]:
    """Check ``score_pairs`` input: one query per document, every one valid text; copies both."""
    if len(queries) != len(documents):
        raise InvalidInputError(
            f"score_pairs needs one query per document, got {len(queries)} queries "
            f"for {len(documents)} documents"
        )
    if not documents:
        return [], []
    for query in queries:
        validate_request(query, (), None)
    _, docs, _ = validate_request(queries[0], documents, None)
    return list(queries), docs


@dataclass(frozen=True, slots=True)
class RerankResponse:
    """One call's results with what it consumed and who answered (``Reranker.rerank_response``).

    Attributes:
        results: What ``rerank`` returns for the same call.
        usage: What the call consumed (``Usage``).
        reranker: The reranker that answered: the reranker itself, or for a
            ``FallbackReranker`` the member that answered.
        reranked: False only when a fail-open ``FallbackReranker`` returned the first-stage
            order because every reranker failed; every score is then NaN (there is none).
        failures: The errors of rerankers tried before the one that answered (fallbacks), in
            the order they happened.
    """

    results: list[RerankResult]
    usage: Usage
    reranker: Reranker
    reranked: bool = True
    failures: tuple[Exception, ...] = field(default=())

    @property
    def answered_by(self) -> str:
        """The answering reranker's label (``Reranker.label``), e.g. ``"cohere:rerank-v3.5"``."""
        return self.reranker.label


def _async_only(self: Reranker, query: str, documents: list[str]) -> Sequence[float]:
    """The ``_score`` of a ``native_async`` class that defines only ``_ascore``."""
    raise ConfigurationError(
        f"{type(self).__name__} scores asynchronously only (it defines _ascore, not _score): "
        "call arerank or arerank_response, or define _score for the sync calls"
    )


class Reranker(ABC):
    """Reorders documents by their relevance to a query.

    ``rerank`` is concrete: it checks the input, returns ``[]`` for no documents without
    touching the backend, scores through the backend's one hook (``_score``, and ``_ascore``
    for the async path), then sorts best first with ties in input order and applies ``top_n``.

    Capabilities are class attributes, read by the base and by ``serve``, never guessed from
    which methods a class overrides at call time:

    * ``answers_with`` (``answers_with_async`` for the async pair): ``"scores"``, the base's
      pipeline over ``_score_usage``; ``"rerank"``, the class's own ``rerank`` (``arerank``),
      which ``rerank_response`` wraps with an empty ``Usage``; ``"response"``, its own
      ``rerank_response`` (``arerank_response``), whose results ``rerank`` returns.
    * ``native_async``: its own ``_ascore``, which the base's ``_ascore_usage`` awaits (no
      usage) instead of running ``_score_usage`` in a worker thread.
    * ``batching``, how ``serve`` may score many requests together: ``"whole"``, each request
      alone through ``rerank_response`` (its usage its own); ``"pairs"``, pairs of several
      requests in one ``score_pairs`` call (counting nothing); ``"rows"``, a local model
      whose ``runner`` encodes pairs to rows that share forward passes (real token counts).

    The rule for a subclass that declares none of them, applied once when the class is made
    (``__init_subclass__``) from what its own body defines: ``rerank_response`` (or
    ``arerank_response``) gives ``"response"``; ``rerank`` (``arerank``) gives ``"rerank"``
    unless it inherits ``"response"``; ``_ascore`` gives ``native_async = True``;
    ``score_pairs`` gives ``batching = "pairs"``. Otherwise a capability is inherited, and a
    class that assigns one in its body keeps what it assigned. A ``native_async`` class may
    leave ``_score`` out: its sync calls then raise a ``ConfigurationError`` saying so.
    """

    #: Short backend name used in errors and by ``milvus_rerank.milvus.server_side_ranker``.
    provider: ClassVar[str] = "custom"
    #: The model this reranker scores with (a hub name, a path, or a provider's model name);
    #: None where a server decides.
    model_name: str | None = None
    #: Where ``rerank``/``rerank_response`` answers come from (see the class docstring).
    answers_with: ClassVar[Answers] = "scores"
    #: Where ``arerank``/``arerank_response`` answers come from.
    answers_with_async: ClassVar[Answers] = "scores"
    #: Whether the class has its own async scoring (``_ascore``).
    native_async: ClassVar[bool] = False
    #: How ``serve`` may score many requests together (see the class docstring).
    batching: ClassVar[Batching] = "whole"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Declare the capabilities a subclass leaves undeclared (the class docstring's rule)."""
        super().__init_subclass__(**kwargs)
        body = cls.__dict__
        for attribute, own, whole in (
            ("answers_with", "rerank", "rerank_response"),
            ("answers_with_async", "arerank", "arerank_response"),
        ):
            if attribute in body:
                continue
            inherited = max(
                (getattr(base, attribute, "scores") for base in cls.__bases__),
                key=_ANSWERS_ORDER.index,
            )
            if whole in body:
                inherited = "response"
            elif own in body and inherited == "scores":
                inherited = "rerank"
            setattr(cls, attribute, inherited)
        if "_ascore" in body and "native_async" not in body:
            cls.native_async = True
        if cls.native_async and getattr(cls._score, "__isabstractmethod__", False):
            cls._score = _async_only  # type: ignore[method-assign]
        if "score_pairs" in body and "batching" not in body:
            cls.batching = "pairs"

    @property
    def label(self) -> str:
        """Which reranker this is, for logs and adapters' metadata: ``provider:model_name``.

        The provider alone where no model is named (a server that picks its own).
        """
        return f"{self.provider}:{self.model_name}" if self.model_name else self.provider

    def rerank(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> list[RerankResult]:
        """Rerank ``documents`` for ``query``, best first; keep the best ``top_n`` (all if None).

        Raises:
            InvalidInputError: an empty or non-string query, a non-string document, a bad top_n.
            ProviderError: the backend failed (API providers only).
        """
        if self.answers_with == "response":
            return self.rerank_response(query, documents, top_n).results
        return self._scored_response(query, documents, top_n).results

    async def arerank(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> list[RerankResult]:
        """Async ``rerank``: native for HTTP backends, a worker thread for local models."""
        if self.answers_with_async == "response":
            return (await self.arerank_response(query, documents, top_n)).results
        return (await self._ascored_response(query, documents, top_n)).results

    def rerank_response(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> RerankResponse:
        """``rerank``'s results with the call's ``Usage`` and the reranker that answered.

        Adapters and ``FallbackReranker`` call this. A class answering with its own ``rerank``
        (``answers_with == "rerank"``) keeps it here: its results come with an empty ``Usage``.
        A class with its own ``rerank_response`` reaches the pipeline through ``super()``.

        Raises:
            InvalidInputError, ProviderError: as ``rerank``.
        """
        if self.answers_with != "rerank":
            return self._scored_response(query, documents, top_n)
        query, docs, top_n = validate_request(query, documents, top_n)
        if not docs:
            return RerankResponse([], Usage(), self)
        return RerankResponse(list(self.rerank(query, docs, top_n)), Usage(), self)

    async def arerank_response(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> RerankResponse:
        """Async ``rerank_response``; an own ``arerank`` is kept, as ``rerank`` is there."""
        if self.answers_with_async != "rerank":
            return await self._ascored_response(query, documents, top_n)
        query, docs, top_n = validate_request(query, documents, top_n)
        if not docs:
            return RerankResponse([], Usage(), self)
        return RerankResponse(list(await self.arerank(query, docs, top_n)), Usage(), self)

    def _scored_response(
        self, query: str, documents: Sequence[str], top_n: int | None
    ) -> RerankResponse:
        """The response scored through the backend's hooks (``_score_usage``)."""
        query, docs, top_n = validate_request(query, documents, top_n)
        if not docs:
            return RerankResponse([], Usage(), self)
        scores, usage = self._score_usage(query, docs)
        return RerankResponse(rank(docs, scores, top_n, provider=self.provider), usage, self)

    async def _ascored_response(
        self, query: str, documents: Sequence[str], top_n: int | None
    ) -> RerankResponse:
        """Async ``_scored_response`` (``_ascore_usage``)."""
        query, docs, top_n = validate_request(query, documents, top_n)
        if not docs:
            return RerankResponse([], Usage(), self)
        scores, usage = await self._ascore_usage(query, docs)
        return RerankResponse(rank(docs, scores, top_n, provider=self.provider), usage, self)

    def __call__(
        self, query: str, documents: Sequence[str], top_k: int | None = 5
    ) -> list[RerankResult]:
        """pymilvus-model's call shape, ``rf(query, documents, top_k=5)``, with its ``top_k``.

        ``top_k`` is applied exactly as pymilvus-model's rerank functions do
        (``if top_k: ranked = ranked[:top_k]``): 0 or None keep every document, a count above
        the number of documents keeps them all, and a negative ``-k`` drops the ``k`` worst
        (Python slicing). Use ``rerank(top_n=...)`` for the strict form that refuses those.
        Scores are plain floats where pymilvus-model's local models return numpy floats.

        Raises:
            InvalidInputError: bad ``query`` or ``documents`` (as ``rerank``), or a
                ``top_k`` that is neither an int nor None.
        """
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
        ):
            raise InvalidInputError(f"top_k must be an int or None, got {describe_value(top_k)}")
        ranked = self.rerank(query, documents)
        return ranked[: int(top_k)] if top_k else ranked

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        """Scores of ``(queries[i], documents[i])`` pairs, in order, without ranking them.

        ``serve`` batches concurrent requests through this where ``batching`` says so. The
        default groups the pairs by query and scores each group through the backend's hook;
        local rerankers override it with one batched pass over every pair.

        Raises:
            InvalidInputError: ``queries`` and ``documents`` differ in length, or hold non-text.
        """
        queries, documents = validate_pairs(queries, documents)
        groups: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault(query, []).append(i)
        scores = [0.0] * len(documents)
        for query, positions in groups.items():
            q, docs, _ = validate_request(query, [documents[i] for i in positions], None)
            ranked = rank(docs, self._score(q, docs), None, provider=self.provider)
            for result in ranked:
                scores[positions[result.index]] = result.score
        return scores

    def milvus_function_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """This reranker's part of a Milvus model-rerank Function's ``params``.

        ``target`` is ``"milvus"`` (a Milvus 2.6+ server) or ``"milvus-lite"``. Providers that
        Milvus can call supply their Milvus provider name and settings (``provider``,
        ``endpoint``, ``model_name``...) through the ``_milvus_params`` hook;
        ``milvus.server_side_params`` adds the queries. ``credential`` names a key in the
        server's ``milvus.yaml``: raw keys never go to a Milvus server.

        Raises:
            ConfigurationError: an unknown target, or Milvus cannot call this reranker.
        """
        if target not in ("milvus", "milvus-lite"):
            raise ConfigurationError(f"target must be 'milvus' or 'milvus-lite', got {target!r}")
        if credential is not None and (not isinstance(credential, str) or not credential.strip()):
            raise ConfigurationError(
                f"credential must be the name of a credential in milvus.yaml, got {credential!r}"
            )
        if target == "milvus-lite" and credential is not None:
            raise ConfigurationError(
                "Milvus Lite has no milvus.yaml credentials: it runs in this process and takes the "
                f"reranker's own key in the Function's params; drop credential={credential!r}"
            )
        return self._milvus_params(target, credential=credential)

    def _milvus_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """The provider's Milvus params for a checked ``target``; by default it cannot be called."""
        raise ConfigurationError(
            f"Milvus cannot call a {type(self).__name__} itself: its server-side model rerank "
            "calls HTTP services only. Run `milvus-rerank serve` for a local model and point a "
            "VLLMReranker(base_url=...) or TEIReranker at it, or rerank client-side with "
            "milvus_rerank.milvus.rerank_hits."
        )

    @abstractmethod
    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        """Return one relevance score per document, in input order (never empty input)."""

    async def _ascore(self, query: str, documents: list[str]) -> Sequence[float]:
        """Async scoring hook; by default runs ``_score`` in a worker thread."""
        return await asyncio.to_thread(self._score, query, documents)

    def _score_usage(self, query: str, documents: list[str]) -> tuple[Sequence[float], Usage]:
        """Scores and the call's ``Usage``; backends that measure usage override this.

        By default ``_score`` with an empty ``Usage`` (nothing reported).
        """
        return self._score(query, documents), Usage()

    async def _ascore_usage(
        self, query: str, documents: list[str]
    ) -> tuple[Sequence[float], Usage]:
        """Async ``_score_usage``.

        ``_ascore`` with an empty ``Usage`` where the backend has its own (``native_async``),
        else ``_score_usage`` in a worker thread, so a backend that only measures sync keeps
        its usage.
        """
        if self.native_async:
            return await self._ascore(query, documents), Usage()
        return await asyncio.to_thread(self._score_usage, query, documents)

    def load(self) -> Self:
        """Load now what the reranker would load on first use (a local model's weights).

        Call it at service start-up so the first request does not pay for loading. A no-op for
        API rerankers. Returns the reranker itself.

        Raises:
            ConfigurationError: the model cannot be loaded (missing, corrupt, no such device).
        """
        return self

    def input_window(self) -> int | None:
        """Tokens of one (query, document) pair the model reads; None where it is not known here.

        Local rerankers answer with their ``max_length`` (loading the model if needed); API
        rerankers leave truncation to the provider and answer None. ``serve`` sizes its
        per-document character cap from this.
        """
        return None

    def passages_per_document(self) -> int:
        """How many windows (``input_window`` tokens each) of one document this reranker reads.

        1 by default: the document is cut to one window. A local reranker with
        ``long_documents="max_passage"`` reads up to ``max_passages``; wrappers answer for what
        they wrap. ``serve`` sizes its per-document character cap by window times this.
        """
        return 1

    def close(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Release held resources (HTTP connections); the reranker stays usable."""

    async def aclose(self) -> None:
        """Async ``close``."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # A reranker is a handle on a loaded model, an HTTP client or an API key, like a database
    # connection: pickling one would ship weights or a key (or fail halfway on a lock), so it
    # refuses at once; copies are the reranker itself, so what holds one (an adapter) can be
    # deep-copied, and no two objects ever own, and close, one HTTP client.
    def __getstate__(self) -> Any:
        raise TypeError(
            f"a {type(self).__name__} cannot be pickled: a reranker holds a loaded model, an "
            "HTTP client or an API key. Build one in each process from its settings instead."
        )

    def __copy__(self) -> Self:
        """The reranker itself: a reranker is a shared handle, never copied."""
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        """The reranker itself: deep copies of what holds one (an adapter) share it."""
        return self

    def _repr_fields(self) -> dict[str, Any]:
        """Public, non-secret settings shown by ``repr``."""
        return {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({fields})"
