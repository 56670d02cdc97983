"""How ``serve`` answers what is not a ranking: ``HTTPError``, a client gone, a scorer's failure.

A reranker's failure becomes the status its kind means (an upstream's rate limit 429, its
refusal of this server's key 502, its unavailability 503, invalid input 400 or the format's
own status, anything else 500, a reranker in this process answering bad scores too), logged
as one line that never holds an upstream's text.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from milvus_rerank.core.checks import clip
from milvus_rerank.core.errors import (
    AllRerankersFailedError,
    AuthenticationError,
    InvalidInputError,
    InvalidResponseError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    RerankError,
)

if TYPE_CHECKING:
    from milvus_rerank.core.base import Reranker

__all__ = [
    "CLIENT_ERRORS",
    "ClientGone",
    "HTTPError",
    "as_one_failure",
    "failure_answer",
    "log",
    "upstream_providers",
]

log = logging.getLogger("milvus_rerank.serve")  # the name users configure

#: An upstream's answers that refuse the request's content: the client's bad request here.
CLIENT_ERRORS = frozenset({400, 413, 422})


class HTTPError(Exception):
    """An answer other than 200, rendered in the route's own error shape.

    ``reason``: why it refuses, where its status does not say (a label of
    ``metrics.REASONS``, e.g. ``"overloaded"`` for a 429 of this server's own limits).
    """

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.reason = reason


class ClientGone(Exception):
    """The client disconnected: nothing is answered, nothing is logged."""


def _member_failures(exc: Exception) -> list[Exception]:
    """The failures of a ``FallbackReranker``'s members, nested chains flattened."""
    if not isinstance(exc, AllRerankersFailedError):
        return [exc]
    return [leaf for failure in exc.failures for leaf in _member_failures(failure)]


def as_one_failure(exc: Exception) -> Exception:
    """A fallback's failure answered as its members' failures mean, so clients back off.

    Every member rate limited: a ``RateLimitError`` with the soonest ``Retry-After`` (429);
    every member rate limited or unavailable: a ``ProviderUnavailableError`` (503); else the
    error itself (502).
    """
    if not isinstance(exc, AllRerankersFailedError):
        return exc
    leaves = _member_failures(exc)
    if leaves and all(isinstance(leaf, RateLimitError) for leaf in leaves):
        waits = [
            wait
            for leaf in leaves
            if isinstance(leaf, RateLimitError)
            and (wait := leaf.retry_after) is not None
            and math.isfinite(wait)
            and wait >= 0
        ]
        return RateLimitError(
            str(exc), provider="fallback", retry_after=min(waits) if waits else None
        )
    if leaves and all(
        isinstance(leaf, (RateLimitError, ProviderUnavailableError)) for leaf in leaves
    ):
        return ProviderUnavailableError(str(exc), provider="fallback")
    return exc


def upstream_providers(reranker: Reranker) -> frozenset[str]:
    """The providers whose failures are an upstream API's, for a server of ``reranker``.

    Every API provider key of the registry, and the provider of each ``HTTPReranker`` served
    (itself, or a member of a fallback or the reranker of a cache). Any other reranker runs in
    this process: an ``InvalidResponseError`` of its own (a NaN score, a wrong count) is its
    own failure, not an upstream's.
    """
    from milvus_rerank import HTTPReranker
    from milvus_rerank.core.registry import PROVIDERS
    from milvus_rerank.wrappers.cache import CachedReranker
    from milvus_rerank.wrappers.fallback import FallbackReranker

    names = {key for key, spec in PROVIDERS.items() if spec.kind == "api"}
    todo, seen = [reranker], set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, HTTPReranker):
            names.add(current.provider)
        elif isinstance(current, FallbackReranker):
            todo.extend(current.rerankers)
        elif isinstance(current, CachedReranker):
            todo.append(current.reranker)
    return frozenset(names)


def _is_upstream(exc: Exception, upstreams: frozenset[str] | None) -> bool:
    """Whether ``exc`` is an upstream API's failure.

    Every ``ProviderError`` is, but an ``InvalidResponseError`` from a reranker running in
    this process (a provider not in ``upstreams``).
    """
    if not isinstance(exc, ProviderError):
        return False
    if upstreams is None or not isinstance(exc, InvalidResponseError):
        return True
    return exc.provider in upstreams


def _status(
    exc: Exception, provider: str, invalid: int, is_upstream: bool
) -> tuple[int, str, dict[str, str]]:
    """The status, the client's message and the headers that answer ``exc``."""
    status_code = getattr(exc, "status_code", None)
    upstream = f" (HTTP {status_code})" if status_code else ""
    if isinstance(exc, RateLimitError):
        wait, after = exc.retry_after, "1"
        if wait is not None and math.isfinite(wait) and wait >= 0:
            after = str(max(1, math.ceil(wait)))
        return (
            429,
            f"the upstream reranker {provider!r} is rate limited{upstream}",
            {"Retry-After": after},
        )
    if isinstance(exc, AuthenticationError):
        what = f"the upstream reranker {provider!r} refused this server's key{upstream}"
        return 502, what, {}
    if isinstance(exc, ProviderUnavailableError):
        return 503, f"the upstream reranker {provider!r} is unavailable{upstream}", {}
    if type(exc) is ProviderError and status_code in CLIENT_ERRORS:
        # The upstream refused this request's content (e.g. a pair past its window): the
        # client's bad request, as for any invalid input; its text is not echoed.
        what = f"the upstream reranker {provider!r} refused this request as invalid{upstream}"
        return invalid, what, {}
    if isinstance(exc, ProviderError) and is_upstream:
        return 502, f"the upstream reranker {provider!r} failed{upstream}", {}
    if isinstance(exc, InvalidInputError):
        return invalid, str(exc), {}
    return 500, f"the reranker failed ({type(exc).__name__})", {}


def failure_answer(
    exc: Exception, provider: str, invalid: int, upstreams: frozenset[str] | None = None
) -> HTTPError:
    """The answer to a reranker's failure, logged as one line without a traceback.

    Args:
        exc: What scoring raised.
        provider: The served reranker's provider, named where ``exc`` names none.
        invalid: The route's status for invalid input (400; TEI: 422).
        upstreams: The providers that are upstream APIs (``upstream_providers``); an
            ``InvalidResponseError`` of any other is the reranker's own failure (500). None:
            every ``ProviderError`` is an upstream's.
    """
    exc = as_one_failure(exc)
    provider = getattr(exc, "provider", None) or provider
    is_upstream = _is_upstream(exc, upstreams)
    status, what, headers = _status(exc, provider, invalid, is_upstream)
    if is_upstream:  # the upstream's own text may echo its key
        detail = f"from {provider!r} (HTTP {getattr(exc, 'status_code', None) or 'none'})"
    else:
        detail = " ".join(clip(str(exc), 300).split())
    log.warning("serve: answered %d: %s: %s", status, type(exc).__name__, clip(detail, 400))
    if not isinstance(exc, RerankError):
        log.debug("serve: the reranker's failure", exc_info=exc)
    return HTTPError(status, what, headers)
