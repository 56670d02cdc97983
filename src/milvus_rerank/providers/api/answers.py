"""What an answer means: its status judged, its JSON parsed, its scores validated.

A 2xx answer is parsed (``body.parse_json``) and each result checked: index in range, none
duplicated, none missing, every score a finite number; anything else is an
``InvalidResponseError`` and no ranking is made. Any other status becomes a ``Failed`` attempt
(its typed error, message, request id and ``Retry-After``) for the retry policy to judge.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from milvus_rerank.core.errors import (
    AuthenticationError,
    InvalidResponseError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
)
from milvus_rerank.core.results import Usage
from milvus_rerank.core.retry import FailedAttempt
from milvus_rerank.providers.api.body import (
    ERROR_BODY_BYTES,
    DuplicateKey,
    decode_text,
    parse_json,
    too_many_values,
)
from milvus_rerank.providers.api.secrets import ServerText
from milvus_rerank.providers.api.usage import header_count

__all__ = ["Answer", "AnswerReader", "Failed", "parse_retry_after"]

logger = logging.getLogger("milvus_rerank.http")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class Failed(Exception):
    """A non-2xx answer, for the retry policy to judge."""

    def __init__(self, failure: FailedAttempt) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass(frozen=True, slots=True)
class Answer:
    """A parsed 2xx answer (any JSON value, null included), and its usage header's value."""

    body: Any
    usage_header: str | None = None


class AnswerReader:
    """Reads one reranker's answers: judged, parsed and validated, every message made safe.

    Args:
        text: Makes the server's text fit for messages (scrubbed, clipped).
        results: The provider's hook finding the result list in a parsed answer; raises
            ``ValueError`` when the answer has another shape.
        score_key: Where each result holds its score.
        usage: The provider's hook reading what a parsed answer reports it consumed.
        usage_header: A response header reporting the tokens consumed (read instead of
            ``usage``'s tokens), or None.
        base_url: The server, named when an unsent key explains a 401.
        unread_env_var: A key variable that was set but not sent there, or None.
    """

    def __init__(
        self,
        text: ServerText,
        *,
        results: Callable[[Any], Any],
        score_key: str,
        usage: Callable[[Any], Usage],
        usage_header: str | None,
        base_url: str,
        unread_env_var: str | None,
    ) -> None:
        self.text = text
        self.results = results
        self.score_key = score_key
        self.read_usage = usage
        self.usage_header = usage_header
        self.base_url = base_url
        self.unread_env_var = unread_env_var

    # No error is raised inside an ``except`` block: it would keep the caught exception as its
    # ``__context__`` (a JSON error whose ``.doc`` is the raw answer), reachable by any code
    # walking the chain.

    def parse(self, response: httpx.Response, content: bytes, count: int) -> Answer:
        """The parsed JSON of a 2xx answer over ``count`` documents.

        Raises:
            Failed: any other status, with its typed error.
            InvalidResponseError: a 2xx answer that is too big to parse, or not JSON.
        """
        status = response.status_code
        if not 200 <= status < 300:
            raise Failed(self._failure(response, content))
        excess = too_many_values(content, count)
        if excess is not None:
            values, budget = excess
            raise self.text.invalid(
                f"it holds about {values:,} JSON values for {count} documents (at most "
                f"{budget:,} are parsed)",
                response,
            )
        header = response.headers.get(self.usage_header) if self.usage_header else None
        problem = None
        try:
            return Answer(parse_json(content), header)
        except DuplicateKey as exc:
            problem = f"a JSON object names {self.text.describe(exc.key)} twice"
        except (ValueError, UnicodeDecodeError, RecursionError):
            kind = self.text.safe(response.headers.get("content-type", "no content type"), 80)
            shown = self.text.safe(decode_text(response, content[:ERROR_BODY_BYTES]))
            problem = f"HTTP {status} with a body that is not JSON ({kind}): {shown!r}"
        raise self.text.invalid(problem, response)

    def _failure(self, response: httpx.Response, content: bytes) -> FailedAttempt:
        status = response.status_code
        error: type[ProviderError] = ProviderError
        if status in (401, 403):
            error = AuthenticationError
        elif status == 429:
            error = RateLimitError
        elif status in (408, 409) or status >= 500:
            error = ProviderUnavailableError
        return FailedAttempt(
            error,
            self.error_text(response, content),
            self.text.provider,
            status_code=status,
            request_id=self.text.request_id(response),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )

    def error_text(self, response: httpx.Response, content: bytes) -> str:
        """The message of a non-2xx answer: its detail, request id and a hint, made safe."""
        detail: Any = None
        text = decode_text(response, content)
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            body = None
        if isinstance(body, dict):
            for key in ("message", "detail", "error"):
                if body.get(key):
                    detail = body[key]
                    break
            if isinstance(detail, dict):
                detail = detail.get("message", detail)
        if detail is None:
            detail = text.strip() or response.reason_phrase
        message = f"{self.text.provider} rerank failed with HTTP {response.status_code}: "
        message += self.text.safe(detail if isinstance(detail, str) else repr(detail))
        request_id = self.text.request_id(response)
        if request_id:
            message += f" (request id {request_id})"
        if response.status_code in (401, 403) and self.unread_env_var is not None:
            message += (
                f" (no key was sent: {self.unread_env_var} is sent only to the provider's own "
                f"API; pass api_key=... for {self.base_url})"
            )
        # Each part was scrubbed; a key split between them (detail, request id) is not.
        return self.text.redactor().redact(message)

    def merge(self, scores: list[float], start: int, count: int, body: Any) -> None:
        """Validate one chunk's answer and write its scores at their global positions."""
        for index, score in self.scores(body, count, start, len(scores)):
            scores[start + index] = score

    def scores(
        self, body: Any, count: int, start: int = 0, total: int | None = None
    ) -> Iterator[tuple[int, float]]:
        """The (index, score) pairs of one answer over ``count`` documents, each checked.

        When the answer covers a chunk (``documents[start:start + count]`` of ``total``), every
        message names that chunk, and missing documents by their position in the whole list.

        Raises:
            InvalidResponseError: the first problem found.
        """
        chunked = total is not None and total != count
        where = f" (the chunk of documents[{start}:{start + count}])" if chunked else ""

        def invalid(message: str) -> InvalidResponseError:
            return self.text.invalid(message + where)

        describe = self.text.describe
        shape_error = None
        try:
            items = self.results(body)
        except ValueError as exc:
            shape_error = f"unexpected answer shape: {exc}; got {describe(body)}"
        if shape_error is not None:  # raised here, so the error keeps no context
            raise invalid(shape_error)
        if not isinstance(items, list):
            raise invalid(f"results must be a list, got {describe(items)}")
        seen: set[int] = set()
        for item in items:
            if not isinstance(item, dict):
                raise invalid(f"a result must be an object, got {describe(item)}")
            index, value = self._checked(item, count, seen, invalid)
            seen.add(index)
            yield index, value
        if len(seen) != count:
            missing = sorted(start + i for i in set(range(count)) - seen)
            raise invalid(
                f"answer scored {len(seen)} of {count} documents; missing documents{missing[:10]}"
            )

    def _checked(
        self,
        item: dict[str, Any],
        count: int,
        seen: set[int],
        invalid: Callable[[str], InvalidResponseError],
    ) -> tuple[int, float]:
        """One result's index (in range, not seen yet) and finite score."""
        describe = self.text.describe
        index, score = item.get("index"), item.get(self.score_key)
        if isinstance(index, bool) or not isinstance(index, int):
            raise invalid(f"result index must be an int, got {describe(index)}")
        if not 0 <= index < count:
            raise invalid(f"result index {describe(index)} is out of range for {count} documents")
        if index in seen:
            raise invalid(f"result index {index} appears twice")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise invalid(
                f"{self.score_key} of index {index} must be a number, got {describe(score)}"
            )
        try:
            value = float(score)
        except OverflowError:  # an int past float's range (a 400-digit score)
            value = math.inf
        if not math.isfinite(value):
            raise invalid(f"{self.score_key} of index {index} is not finite: {describe(score)}")
        return index, value

    def usage(self, answer: Answer) -> Usage:
        """One answer's ``Usage``: what the provider reads from it, plus the request itself."""
        provider = self.text.provider
        try:
            usage = self.read_usage(answer.body)
        except Exception as exc:  # noqa: BLE001 - a usage parser must never fail a ranking
            logger.debug("%s: usage could not be read (%s)", provider, type(exc).__name__)
            usage = Usage()
        tokens = usage.tokens
        if self.usage_header is not None:
            tokens = header_count(provider, self.usage_header, answer.usage_header)
        return Usage(tokens, usage.search_units, usage.rerank_units, requests=1)
