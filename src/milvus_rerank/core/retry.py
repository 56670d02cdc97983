"""When a failed request is tried again, and how long to wait: one frozen ``RetryPolicy``.

The policy is pure: given one failed attempt, how many came before and how long the call has
run, ``RetryPolicy.decide`` answers "wait this long" or "give up with this error". The sync
and async HTTP paths both ask it and differ only in how they sleep. A failure is described
by a ``FailedAttempt`` and its error is built once, when the policy gives up, with its final
message (a note such as "the deadline is near" is part of that message, never added later).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeGuard

from milvus_rerank.core.errors import ConfigurationError, ProviderError, RateLimitError

__all__ = ["DEFAULT_RETRY_STATUSES", "FailedAttempt", "RetryPolicy"]

#: 408 Request Timeout, 409 Conflict, 429 Too Many Requests and every 5xx.
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 409, 429, *range(500, 600)})

#: What went wrong on the wire when no HTTP answer came.
Transport = Literal["connect", "timeout"]


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """One failed attempt, described before any exception is built.

    Attributes:
        error: The exception class to raise if this is the last attempt.
        message: Its message (already free of secrets).
        provider: The backend's name.
        status_code: The HTTP status, or None when no answer came.
        request_id: The provider's request id, when it sent one.
        retry_after: Seconds the server asked to wait (``Retry-After``), when it said so.
        transport: ``"connect"`` or ``"timeout"`` when no answer came, else None.
    """

    error: type[ProviderError]
    message: str
    provider: str
    status_code: int | None = None
    request_id: str | None = None
    retry_after: float | None = None
    transport: Transport | None = None

    def build(self, note: str | None = None) -> ProviderError:
        """The exception for this failure, with ``note`` appended to its message."""
        message = self.message if note is None else f"{self.message} ({note})"
        if issubclass(self.error, RateLimitError):
            return self.error(
                message,
                provider=self.provider,
                status_code=self.status_code,
                request_id=self.request_id,
                retry_after=self.retry_after,
            )
        return self.error(
            message,
            provider=self.provider,
            status_code=self.status_code,
            request_id=self.request_id,
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How an HTTP reranker retries a failed request; immutable, shareable between rerankers.

    Delays grow as ``backoff_base * 2**n`` up to ``backoff_max``, each scaled by a random
    factor in ``[1 - jitter, 1]`` so that many clients do not retry in step. A server's
    ``Retry-After`` (capped at ``max_retry_after``) lengthens the wait when
    ``honour_retry_after``, but never shortens it below that computed delay: a ``0``, negative
    or past-date ``Retry-After`` cannot turn retries into a hot loop in lockstep. No retry
    starts when its wait would reach past ``deadline``.

    Attributes:
        max_retries: Attempts after the first one (0: never retry).
        backoff_base: Seconds before the first retry, before jitter.
        backoff_max: The longest computed wait, in seconds.
        jitter: The fraction of each wait that is random, from 0 (none) to 1.
        retry_statuses: HTTP statuses worth another attempt (408, 409, 429 and 5xx).
        retry_connection_errors: Retry when the server cannot be reached or drops the line.
        retry_timeouts: Retry when a request times out.
        honour_retry_after: Wait as long as the server's ``Retry-After`` says.
        max_retry_after: The longest ``Retry-After`` obeyed, in seconds; longer asks are cut.
        deadline: Seconds for a whole call, every attempt and wait included.

    Raises:
        ConfigurationError: a value out of range, named in the message.
    """

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    jitter: float = 0.5
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES
    retry_connection_errors: bool = True
    retry_timeouts: bool = True
    honour_retry_after: bool = True
    max_retry_after: float = 60.0
    deadline: float = 120.0

    def __post_init__(self) -> None:
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            _bad("max_retries", retries, "an int >= 0")
        _check_seconds("backoff_base", self.backoff_base, allow_zero=True)
        _check_seconds("backoff_max", self.backoff_max, allow_zero=True)
        if self.backoff_max < self.backoff_base:
            _bad("backoff_max", self.backoff_max, f"at least backoff_base ({self.backoff_base})")
        if not _is_number(self.jitter) or not 0 <= self.jitter <= 1:
            _bad("jitter", self.jitter, "a number from 0 to 1")
        statuses = self.retry_statuses
        if isinstance(statuses, (str, bytes)) or not isinstance(
            statuses, (frozenset, set, tuple, list)
        ):
            _bad("retry_statuses", statuses, "a set of HTTP status codes")
        for status in statuses:
            if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status < 600:
                # 1xx-3xx answers are not failures: nothing would ever retry on them.
                _bad("retry_statuses", status, "HTTP error status codes, from 400 to 599")
        object.__setattr__(self, "retry_statuses", frozenset(statuses))
        for flag in ("retry_connection_errors", "retry_timeouts", "honour_retry_after"):
            if not isinstance(getattr(self, flag), bool):
                _bad(flag, getattr(self, flag), "a bool")
        _check_seconds("max_retry_after", self.max_retry_after, allow_zero=True)
        _check_seconds("deadline", self.deadline, allow_zero=False)

    def __repr__(self) -> str:
        fields = {
            "max_retries": self.max_retries,
            "backoff_base": self.backoff_base,
            "backoff_max": self.backoff_max,
            "jitter": self.jitter,
            "retry_statuses": _StatusRanges(self.retry_statuses),
            "retry_connection_errors": self.retry_connection_errors,
            "retry_timeouts": self.retry_timeouts,
            "honour_retry_after": self.honour_retry_after,
            "max_retry_after": self.max_retry_after,
            "deadline": self.deadline,
        }
        return f"RetryPolicy({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    def retries(self, failure: FailedAttempt) -> bool:
        """Whether this kind of failure is worth another attempt at all."""
        if failure.transport == "connect":
            return self.retry_connection_errors
        if failure.transport == "timeout":
            return self.retry_timeouts
        return failure.status_code is not None and failure.status_code in self.retry_statuses

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds before retry number ``retry + 1`` when the server named no wait."""
        # The exponent is capped: 2.0 ** 1024 overflows, and 2 ** 64 already exceeds any
        # backoff_max once multiplied by a positive backoff_base.
        delay = min(self.backoff_max, self.backoff_base * 2.0 ** min(retry, 64))
        return delay * (1.0 - self.jitter * rand())

    def decide(
        self,
        failure: FailedAttempt,
        retry: int,
        elapsed: float,
        rand: Callable[[], float] = random.random,
    ) -> float | ProviderError:
        """Seconds to wait before trying again, or the error to raise now.

        Args:
            failure: What the attempt that just failed reported.
            retry: How many retries were already made for this request.
            elapsed: Seconds since the request's first attempt started.
            rand: A source of uniform [0, 1) numbers, for the jitter.
        """
        if not self.retries(failure) or retry >= self.max_retries:
            return failure.build()
        delay = self.backoff(retry, rand)
        if self.honour_retry_after and failure.retry_after is not None:
            delay = max(delay, min(failure.retry_after, self.max_retry_after))
        if delay >= self.deadline - elapsed:
            return failure.build(f"gave up: the {self.deadline:g}s deadline is near")
        return delay


class _StatusRanges:
    """Statuses shown compactly in ``repr``: ``{408, 409, 429, 500-599}`` (100 codes otherwise)."""

    def __init__(self, statuses: frozenset[int]) -> None:
        self.statuses = sorted(statuses)

    def __repr__(self) -> str:
        parts: list[str] = []
        run: list[int] = []
        for status in [*self.statuses, -1]:
            if run and status == run[-1] + 1:
                run.append(status)
                continue
            if run:
                parts += [f"{run[0]}-{run[-1]}"] if len(run) > 2 else [str(s) for s in run]
            run = [status]
        return "{" + ", ".join(parts) + "}"


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> None:
    if not _is_number(value) or value < 0 or (not allow_zero and value == 0):
        _bad(name, value, "a finite number of seconds >= 0" if allow_zero else "a positive number")


def _bad(name: str, value: object, expected: str) -> None:
    raise ConfigurationError(f"RetryPolicy: {name} must be {expected}, got {value!r}")
