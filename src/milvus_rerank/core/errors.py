"""The exceptions raised by milvus-rerank.

Every error the package raises on purpose derives from ``RerankError``::

    RerankError
    ├── ConfigurationError            cannot build as asked: bad option, no key, no model
    │   └── MissingDependencyError    an optional extra is missing (also an ImportError)
    ├── InvalidInputError             bad query, documents or top_n (also a ValueError)
    └── ProviderError                 a backend answered with an error or was unreachable
        ├── AuthenticationError       401/403: the key is missing, wrong or lacks access
        ├── RateLimitError            429, still after the retries allowed
        ├── ProviderUnavailableError  5xx, timeouts, connection failures, after the retries
        ├── InvalidResponseError      a 2xx answer that is malformed or inconsistent
        └── AllRerankersFailedError   every reranker of a ``FallbackReranker`` failed

Only ``RateLimitError`` and ``ProviderUnavailableError`` describe conditions worth retrying;
the HTTP layer retries them itself before raising, so callers see them only once it gave up.
Errors carry context in keyword-only attributes and never an API key.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AllRerankersFailedError",
    "AuthenticationError",
    "ConfigurationError",
    "InvalidInputError",
    "InvalidResponseError",
    "MissingDependencyError",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RerankError",
    "describe_failures",
]


class RerankError(Exception):
    """Base class of every error raised by milvus-rerank.

    Errors pickle and deep-copy with their message and attributes (``failures`` included), so
    they cross process pools and ``dataclasses.asdict`` of a response that holds them.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own reduce calls ``cls(*args)``, which fails for the keyword-only
        # attributes here; rebuild without ``__init__`` from the args and the attributes.
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(cls: type[RerankError], args: tuple[Any, ...], state: dict[str, Any]) -> RerankError:
    """The inverse of ``RerankError.__reduce__``: the same class, message and attributes."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigurationError(RerankError):
    """A reranker cannot be built as configured: a bad option, a missing key or model."""


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional dependency is missing; the message holds the exact ``pip install`` line."""

    def __init__(self, feature: str, extra: str, missing: str) -> None:
        self.feature = feature
        self.extra = extra
        self.missing = missing
        super().__init__(
            f"{feature} needs the optional dependency {missing!r}, which is not installed. "
            f'Install it with: pip install "milvus-rerank[{extra}]"'
        )


class InvalidInputError(RerankError, ValueError):
    """The query, the documents or ``top_n`` are not acceptable; the message names the value."""


class ProviderError(RerankError):
    """A reranking backend answered with an error, or could not be reached.

    Attributes:
        provider: The backend's name, e.g. ``"cohere"``.
        status_code: The HTTP status of the last answer, or ``None`` when none came.
        request_id: The provider's id for the request, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code
        self.request_id = request_id


class AuthenticationError(ProviderError):
    """The provider refused the credentials (HTTP 401 or 403)."""


class RateLimitError(ProviderError):
    """The provider kept answering 429 after the allowed retries.

    Attributes:
        retry_after: Seconds the provider asked to wait, when it said so.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = 429,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status_code=status_code, request_id=request_id)
        self.retry_after = retry_after


class ProviderUnavailableError(ProviderError):
    """The provider failed with 5xx, a timeout or a connection error, after the allowed retries."""


class InvalidResponseError(ProviderError):
    """A successful answer that is malformed or does not match the request; no ranking is made."""


class AllRerankersFailedError(ProviderError):
    """Every reranker of a ``FallbackReranker`` failed; ``failures`` holds each one's error.

    The message names each reranker by its place and label, with its error's class (and HTTP
    status, when one came), never an error's own text.

    Attributes:
        labels: Each reranker's label (``Reranker.label``), in the order they were tried.
        failures: Each reranker's error, in the same order.
    """

    def __init__(self, labels: tuple[str, ...], failures: tuple[Exception, ...]) -> None:
        super().__init__(
            f"every reranker failed: {describe_failures(labels, failures)}", provider="fallback"
        )
        self.labels = labels
        self.failures = failures


def describe_failures(labels: tuple[str, ...], failures: tuple[Exception, ...]) -> str:
    """``rerankers[0] <label>: <ErrorClass> (HTTP <status>); ...``: no error's own text."""
    parts = []
    for i, (label, error) in enumerate(zip(labels, failures, strict=False)):
        status = getattr(error, "status_code", None)
        http = (
            f" (HTTP {status})" if isinstance(status, int) and not isinstance(status, bool) else ""
        )
        parts.append(f"rerankers[{i}] {label}: {type(error).__name__}{http}")
    return "; ".join(parts)
