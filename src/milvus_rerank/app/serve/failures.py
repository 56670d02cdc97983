"""How ``serve`` answers what is not a ranking: ``HTTPError``, a client gone, a scorer's failure.

A reranker's failure becomes the status its kind means (an upstream's rate limit 429, its
refusal of this server's key 502, its unavailability 503, invalid input 400 or the format's
own status, anything else 500), logged as one line that never holds an upstream's text.
"""

from __future__ import annotations

import logging
import math

from milvus_rerank.core.checks import clip
from milvus_rerank.core.errors import (
    AllRerankersFailedError,
    AuthenticationError,
    InvalidInputError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    RerankError,
)

__all__ = ["CLIENT_ERRORS", "ClientGone", "HTTPError", "as_one_failure", "failure_answer", "log"]

log = logging.getLogger("milvus_rerank.serve")  # the name users configure

#: An upstream's answers that refuse the request's content: the client's bad request here.
CLIENT_ERRORS = frozenset({400, 413, 422})


class HTTPError(Exception):
    """An answer other than 200, rendered in the route's own error shape."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


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


def _status(exc: Exception, provider: str, invalid: int) -> tuple[int, str, dict[str, str]]:
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
    if isinstance(exc, ProviderError):
        return 502, f"the upstream reranker {provider!r} failed{upstream}", {}
    if isinstance(exc, InvalidInputError):
        return invalid, str(exc), {}
    return 500, f"the reranker failed ({type(exc).__name__})", {}


def failure_answer(exc: Exception, provider: str, invalid: int) -> HTTPError:
    """The answer to a reranker's failure, logged as one line without a traceback.

    Args:
        exc: What scoring raised.
        provider: The served reranker's provider, named where ``exc`` names none.
        invalid: The route's status for invalid input (400; TEI: 422).
    """
    exc = as_one_failure(exc)
    provider = getattr(exc, "provider", None) or provider
    status, what, headers = _status(exc, provider, invalid)
    if isinstance(exc, ProviderError):  # the upstream's own text may echo its key
        detail = f"from {provider!r} (HTTP {getattr(exc, 'status_code', None) or 'none'})"
    else:
        detail = " ".join(clip(str(exc), 300).split())
    log.warning("serve: answered %d: %s: %s", status, type(exc).__name__, clip(detail, 400))
    if not isinstance(exc, RerankError):
        log.debug("serve: the reranker's failure", exc_info=exc)
    return HTTPError(status, what, headers)
