"""``FallbackReranker``: the next reranker answers when one fails, and that is never silent.

A chain of rerankers is tried in order. A failure on the provider's side (unavailable, rate
limited past its retries, timed out, an invalid answer) passes the call to the next one; a
failure that another reranker would repeat or that needs a person (bad input, a wrong key, a
bad configuration) does not, unless asked. Who answered is in each call's ``RerankResponse``
(``answered_by``, ``failures``) and in a WARNING of the ``milvus_rerank.fallback`` logger
whenever it was not the first. With ``fail_open=True`` a chain that fails entirely returns the
first-stage order, marked ``reranked=False``, instead of raising.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar, NamedTuple, TypeVar

from typing_extensions import Self

from milvus_rerank.core.base import (
    MilvusTarget,
    Reranker,
    RerankResponse,
    describe_value,
    validate_pairs,
    validate_request,
)
from milvus_rerank.core.errors import (
    AllRerankersFailedError,
    ConfigurationError,
    InvalidResponseError,
    ProviderUnavailableError,
    RateLimitError,
    describe_failures,
)
from milvus_rerank.core.results import RerankResult, Usage

__all__ = ["FALLS_THROUGH", "FallbackReranker", "unreranked_error"]

logger = logging.getLogger("milvus_rerank.fallback")

_T = TypeVar("_T")


class _Request(NamedTuple):
    """A checked call (``validate_request``): what every member of a chain is asked."""

    query: str
    docs: list[str]
    top_n: int | None


#: Errors that pass a call to the next reranker: the provider's side failed, and another
#: provider may well answer. ``ProviderUnavailableError`` covers 5xx answers, timeouts and
#: connection failures after the retries; ``AllRerankersFailedError`` a nested chain that failed
#: this way throughout; ``TimeoutError`` a custom reranker's own timeout.
FALLS_THROUGH: tuple[type[Exception], ...] = (
    ProviderUnavailableError,
    RateLimitError,
    InvalidResponseError,
    AllRerankersFailedError,
    TimeoutError,
)


class FallbackReranker(Reranker):
    """Rerank with the first of ``rerankers`` that answers; say which one did.

    The input is checked once, up front, so bad input (``InvalidInputError``) reaches no
    reranker. Each reranker is then tried in order until one answers. Errors in
    ``FALLS_THROUGH`` (``ProviderUnavailableError``, ``RateLimitError`` after the reranker's
    own retries, ``InvalidResponseError``, timeouts) pass the call on; anything else is raised
    at once: an ``AuthenticationError``, a ``ConfigurationError`` or another 4xx
    ``ProviderError`` (an unknown model, a request the provider refuses) needs fixing, not a
    fallback, unless named in ``fall_through_on``. Cancellation (``asyncio.CancelledError``)
    and interrupts always propagate and never start the next reranker.

    Who answered: ``rerank_response``/``arerank_response`` return the answering reranker's
    ``RerankResponse`` with ``reranker`` (and ``answered_by``, its label) set to it and
    ``failures`` holding the errors of the rerankers tried before it, in order; each call has
    its own, so threads and tasks never see another call's. An answer from any reranker but the
    first, a chain that failed entirely and an error that does not fall through after earlier
    failures are each logged at WARNING on ``milvus_rerank.fallback``, naming rerankers by
    place and label and errors by class (and HTTP status), never an error's text. ``usage`` is
    the answering reranker's: what the failed attempts consumed is not known.

    When every reranker fails, ``AllRerankersFailedError`` carries each failure. With
    ``fail_open=True`` the call instead returns the documents in their given (first-stage)
    order, cut to ``top_n``, as a response with ``reranked=False``, ``failures`` set,
    ``reranker`` the chain itself, and every score NaN: there is no rerank score, and NaN
    cannot pass for one (it is never above any threshold and ``math.isnan`` finds it). The
    LangChain and LlamaIndex adapters read ``reranked`` and keep the first-stage scores instead;
    ``milvus.rerank_hits`` keeps each hit's ``distance``. ``rerank`` returns the results
    only, so code that needs the flag calls ``rerank_response``. ``score_pairs`` has no
    first-stage order to fall back on and raises even when failing open.

    Chains nest: a member chain that fails throughout raises ``AllRerankersFailedError``, which
    falls through; a member chain that failed open (its ``reranked=False`` answer) counts as
    that same failure while members are left after it, so a fail-open chain hides no healthy
    member behind it, and is returned as it is only from the last place.

    Args:
        rerankers: The rerankers to try, first to last (at least one; each once, counting
            the members of nested chains).
        fall_through_on: More exception types that pass the call on, e.g.
            ``(AuthenticationError,)`` to move on from a revoked key or ``(ProviderError,)``
            for any provider failure. Subclasses of ``Exception`` only.
        fail_open: Return the first-stage order (``reranked=False``) when every reranker
            fails, instead of raising ``AllRerankersFailedError``.

    Raises:
        ConfigurationError: no rerankers, a member that is not a ``Reranker`` or appears
            twice (here or in a nested chain), a bad ``fall_through_on`` or ``fail_open``.
    """

    provider: ClassVar[str] = "fallback"
    answers_with = answers_with_async = "response"  # declared capabilities (see Reranker)
    batching = "whole"  # serve sends each request whole: one member's scores rank it

    def __init__(
        self,
        rerankers: Sequence[Reranker],
        *,
        fall_through_on: type[Exception] | Iterable[type[Exception]] = (),
        fail_open: bool = False,
    ) -> None:
        self.rerankers: tuple[Reranker, ...] = _checked_members(rerankers)
        self.fall_through_on: tuple[type[Exception], ...] = _checked_types(fall_through_on)
        if not isinstance(fail_open, bool):
            raise ConfigurationError(
                "FallbackReranker: fail_open must be True or False, "
                f"got {describe_value(fail_open)}"
            )
        self.fail_open = fail_open
        self._falls_through = FALLS_THROUGH + self.fall_through_on

    @property
    def label(self) -> str:
        """``fallback(<each member's label>, ...)``; ``answered_by`` names the member instead."""
        return f"fallback({', '.join(member.label for member in self.rerankers)})"

    # -- ranking ---------------------------------------------------------------------------

    def rerank_response(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> RerankResponse:
        """The first answering reranker's response, with the failures before it.

        Raises:
            InvalidInputError: bad input (no reranker is called).
            AllRerankersFailedError: every reranker failed (unless ``fail_open``).
            Exception: a reranker's error that does not fall through, as it was raised.
        """
        request = _Request(*validate_request(query, documents, top_n))
        return self._response(request, self.fail_open)

    def _response(self, request: _Request, fail_open: bool) -> RerankResponse:
        if not request.docs:
            return RerankResponse([], Usage(), self)
        try:
            found = self._first(lambda member: self._member_response(member, request))
        except AllRerankersFailedError as exc:
            return self._gave_up(request, exc, fail_open)
        return self._answered(*found)

    def _member_response(self, member: Reranker, request: _Request) -> RerankResponse:
        """A member's response; a nested chain that is not last never fails open.

        The next member is tried instead, and nothing logs a first-stage order not returned.
        """
        if isinstance(member, FallbackReranker) and member is not self.rerankers[-1]:
            return member._response(request, fail_open=False)
        return self._reranked(member, member.rerank_response(*request))

    async def arerank_response(
        self, query: str, documents: Sequence[str], top_n: int | None = None
    ) -> RerankResponse:
        """Async ``rerank_response``; cancelling the call cancels the reranker being tried."""
        request = _Request(*validate_request(query, documents, top_n))
        return await self._aresponse(request, self.fail_open)

    async def _aresponse(self, request: _Request, fail_open: bool) -> RerankResponse:
        if not request.docs:
            return RerankResponse([], Usage(), self)
        try:
            found = await self._afirst(lambda member: self._amember_response(member, request))
        except AllRerankersFailedError as exc:
            return self._gave_up(request, exc, fail_open)
        return self._answered(*found)

    async def _amember_response(self, member: Reranker, request: _Request) -> RerankResponse:
        """Async ``_member_response``."""
        if isinstance(member, FallbackReranker) and member is not self.rerankers[-1]:
            return await member._aresponse(request, fail_open=False)
        return self._reranked(member, await member.arerank_response(*request))

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        """The first answering reranker's ``score_pairs`` (never fails open: no order to keep).

        Raises:
            InvalidInputError: as ``Reranker.score_pairs``.
            AllRerankersFailedError: every reranker failed, whatever ``fail_open`` says.
        """
        queries, documents = validate_pairs(queries, documents)
        if not documents:
            return []
        position, scores, failures = self._first(
            lambda member: member.score_pairs(queries, documents)
        )
        self._log_answer(position, failures)
        return scores

    def _score(self, query: str, documents: list[str]) -> list[float]:
        return self.score_pairs([query] * len(documents), documents)

    def _first(self, call: Callable[[Reranker], _T]) -> tuple[int, _T, list[Exception]]:
        """``call`` on each reranker in turn until one returns; raise when none does."""
        failures: list[Exception] = []
        for position, member in enumerate(self.rerankers):
            try:
                return position, call(member), failures
            except Exception as exc:
                if not self._falls_to_next(position, exc, failures):
                    raise
        raise self._all_failed(failures)

    async def _afirst(
        self, call: Callable[[Reranker], Awaitable[_T]]
    ) -> tuple[int, _T, list[Exception]]:
        """Async ``_first``: a cancelled call never moves on to the next reranker."""
        failures: list[Exception] = []
        for position, member in enumerate(self.rerankers):
            try:
                return position, await call(member), failures
            except Exception as exc:
                if not self._falls_to_next(position, exc, failures):
                    raise
                if _cancelling():  # the reranker swallowed our cancellation: honour it
                    raise asyncio.CancelledError from None
        raise self._all_failed(failures)

    def _falls_to_next(self, position: int, error: Exception, failures: list[Exception]) -> bool:
        """Whether ``error`` passes the call on (kept in ``failures``); if not, it is logged."""
        if isinstance(error, self._falls_through):
            failures.append(error)
            return True
        self._log_stop(position, error, failures)
        return False

    def _reranked(self, member: Reranker, response: RerankResponse) -> RerankResponse:
        """``response``, or the failure of a nested chain that failed open, when not last.

        An unreranked answer from a member that is not the last raises that chain's
        ``AllRerankersFailedError``, so the next member is tried.
        """
        if response.reranked or member is self.rerankers[-1]:
            return response
        raise unreranked_error(response)

    def _answered(
        self, position: int, response: RerankResponse, failures: list[Exception]
    ) -> RerankResponse:
        self._log_answer(position, failures)
        if not failures:
            return response
        return replace(response, failures=(*failures, *response.failures))

    def _all_failed(self, failures: list[Exception]) -> AllRerankersFailedError:
        return AllRerankersFailedError(
            tuple(member.label for member in self.rerankers), tuple(failures)
        )

    def _gave_up(
        self, request: _Request, error: AllRerankersFailedError, fail_open: bool
    ) -> RerankResponse:
        """Raise ``error``, or with ``fail_open`` return the first-stage order, marked unreranked.

        The documents keep their input order (cut to ``top_n``), each scored NaN.
        """
        if not fail_open:
            raise error
        docs, top_n = request.docs, request.top_n
        logger.warning(
            "%s; fail_open: returning the %d documents in their first-stage order, unreranked",
            error,
            len(docs),
        )
        kept = range(len(docs) if top_n is None else min(top_n, len(docs)))
        results = [RerankResult(index=i, score=math.nan, text=docs[i]) for i in kept]
        return RerankResponse(results, Usage(), self, reranked=False, failures=error.failures)

    # -- logging: places, labels and error classes only ------------------------------------

    def _tried(self, failures: list[Exception]) -> str:
        labels = tuple(member.label for member in self.rerankers[: len(failures)])
        return describe_failures(labels, tuple(failures))

    def _log_answer(self, position: int, failures: list[Exception]) -> None:
        if failures:
            logger.warning(
                "rerankers[%d] %s answered after %s",
                position,
                self.rerankers[position].label,
                self._tried(failures),
            )

    def _log_stop(self, position: int, error: Exception, failures: list[Exception]) -> None:
        if failures:
            logger.warning(
                "rerankers[%d] %s raised %s, which does not fall through, after %s",
                position,
                self.rerankers[position].label,
                type(error).__name__,
                self._tried(failures),
            )

    # -- the rest of the Reranker surface --------------------------------------------------

    def load(self) -> Self:
        """Load every reranker now, so a fallback is as ready as the first one."""
        for member in self.rerankers:
            member.load()
        return self

    def input_window(self) -> int | None:
        """The largest window of the rerankers (None if any cannot say: it may read any length).

        Each reranker gets the same text and truncates it to its own window, so ``serve``'s
        character cap (window times ``passages_per_document``) and its check of a client's
        token limit follow the largest: any smaller one would cut what another member reads.
        """
        windows = [member.input_window() for member in self.rerankers]
        if any(window is None for window in windows):
            return None  # a member that cannot say (an API's) may read any length
        return max(w for w in windows if w is not None)

    def passages_per_document(self) -> int:
        """The most windows any member reads of one document (see ``input_window``).

        With the largest window, every member reads all it can within ``input_window()`` times
        this many tokens of a document.
        """
        return max(member.passages_per_document() for member in self.rerankers)

    def close(self) -> None:
        """Close every reranker (all of them, even when one fails; then its error is raised)."""
        errors = []
        for member in self.rerankers:
            try:
                member.close()
            except Exception as exc:  # noqa: BLE001 - the others are still closed
                errors.append(exc)
        if errors:
            raise errors[0]

    async def aclose(self) -> None:
        """Async ``close``."""
        errors = []
        for member in self.rerankers:
            try:
                await member.aclose()
            except Exception as exc:  # noqa: BLE001 - the others are still closed
                errors.append(exc)
        if errors:
            raise errors[0]

    def _milvus_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """Refuse: a server-side Function calls one provider, with no fallback."""
        raise ConfigurationError(
            "a FallbackReranker cannot be a Milvus server-side Function: Milvus calls one "
            "rerank provider and has no fallback. Rerank client-side with "
            "milvus_rerank.milvus.rerank_hits (which uses the fallback), or build the Function "
            "from one reranker, e.g. fallback.rerankers[0].milvus_function_params(...)."
        )

    def _repr_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"rerankers": list(self.rerankers)}
        if self.fall_through_on:
            fields["fall_through_on"] = [t.__name__ for t in self.fall_through_on]
        fields["fail_open"] = self.fail_open
        return fields


def unreranked_error(response: RerankResponse) -> AllRerankersFailedError:
    """The failure behind an unreranked (failed-open) ``response``, for callers that need scores.

    Names the failed chain's members and carries ``response.failures``.
    """
    failed = response.reranker
    labels = (
        tuple(m.label for m in failed.rerankers)
        if isinstance(failed, FallbackReranker)
        else (failed.label,)
    )
    return AllRerankersFailedError(labels, response.failures)


def _checked_members(rerankers: object) -> tuple[Reranker, ...]:
    if isinstance(rerankers, (str, bytes, Mapping)) or not isinstance(rerankers, Sequence):
        raise ConfigurationError(
            "FallbackReranker: rerankers must be a list or tuple of Reranker, "
            f"got {describe_value(rerankers)}"
        )
    if not rerankers:
        raise ConfigurationError("FallbackReranker needs at least one reranker")
    members: list[Reranker] = []
    seen: dict[int, int] = {}  # id of each reranker, nested chains' members included -> place
    for i, member in enumerate(rerankers):
        if not isinstance(member, Reranker):
            raise ConfigurationError(
                f"FallbackReranker: rerankers[{i}] must be a Reranker, got {describe_value(member)}"
            )
        for reranker in _within(member):
            j = seen.setdefault(id(reranker), i)
            if j != i:
                what = (
                    f"is rerankers[{j}]"
                    if reranker is member and members[j] is member
                    else f"repeats a reranker of rerankers[{j}]"
                )
                raise ConfigurationError(
                    f"FallbackReranker: rerankers[{i}] {what} ({reranker.label}), nested chains "
                    "included: trying one reranker again is its RetryPolicy's job"
                )
        members.append(member)
    return tuple(members)


def _within(member: Reranker) -> list[Reranker]:
    """``member`` and, for a nested chain, every reranker inside it, at any depth."""
    if not isinstance(member, FallbackReranker):
        return [member]
    return [member, *(inner for nested in member.rerankers for inner in _within(nested))]


def _checked_types(types: object) -> tuple[type[Exception], ...]:
    items = (types,) if isinstance(types, type) else types
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise ConfigurationError(
            "FallbackReranker: fall_through_on must be an exception class or a tuple of them, "
            f"got {describe_value(types)}"
        )
    checked = []
    for item in items:
        if not isinstance(item, type) or not issubclass(item, BaseException):
            raise ConfigurationError(
                f"FallbackReranker: fall_through_on holds {describe_value(item)}, "
                "not an exception class"
            )
        if not issubclass(item, Exception):
            raise ConfigurationError(
                f"FallbackReranker: fall_through_on cannot hold {item.__name__}: "
                "cancellation and interrupts always propagate"
            )
        checked.append(item)
    return tuple(checked)


def _cancelling() -> bool:
    """Whether the current task has a cancellation request pending (Python 3.11+)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return False
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False
