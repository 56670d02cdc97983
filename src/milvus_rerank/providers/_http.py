"""One HTTP layer for every API reranker: clients, timeouts, retries, chunking, validation.

Provider modules only say where to post (``path``), what to send (``_payload``) and where the
results sit in the answer (``_results``). Everything else is here, once:

* ``httpx.Client`` / ``httpx.AsyncClient`` created lazily (one async client per event loop),
  or injected by the caller; closable; the reranker is a (async) context manager.
* Retries with exponential backoff and jitter on connection errors, timeouts, 408, 409, 429
  and 5xx, honouring ``Retry-After`` (seconds or HTTP date), all within a total deadline;
  never on other 4xx.
* Document lists longer than the provider's per-request limit go out in chunks, concurrently
  up to ``max_concurrency`` requests in flight per reranker, and are merged back by index.
* Every answer is validated: each index in range, none duplicated, none missing, every score
  a finite number. Anything else raises ``InvalidResponseError`` and no ranking is made.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import httpx

from .._version import __version__
from ..base import Reranker, describe_value
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidResponseError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
)

__all__ = ["HTTPReranker", "Secret", "parse_retry_after", "server_root"]

logger = logging.getLogger("milvus_rerank.http")

_T = TypeVar("_T")
_RETRY_STATUS = frozenset({408, 409, 429})
_VERSION_SUFFIX = re.compile(r"/v\d+$")
_VERSION_PREFIX = re.compile(r"^/v\d+/")


class Secret:
    """A string that never shows itself in ``str``, ``repr`` or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


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
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass
class _Attempt:
    """What one failed attempt tells the retry loop."""

    error: ProviderError
    retryable: bool
    retry_after: float | None = None


@dataclass
class _LoopState:
    """Per-event-loop async client and in-flight bound."""

    client: httpx.AsyncClient | None
    semaphore: asyncio.Semaphore


class HTTPReranker(Reranker):
    """Base of the API rerankers: one request and response mapping per subclass.

    Args:
        model: The provider's model name (``None`` for servers that serve one model).
        api_key: The key, else read from the provider's environment variables.
        base_url: The server root (``https://api.cohere.com``); the provider appends its path.
            A root that already ends in a version segment (``.../v1``) is not doubled.
        timeout: Seconds for one HTTP request (connect, read, write, pool).
        max_retries: Retries after the first attempt, for retryable failures only.
        deadline: Seconds for the whole call, retries and backoff included.
        max_batch: Documents per request; longer lists go out in chunks.
        max_concurrency: Requests in flight at once per reranker, over all its calls.
        http_client: An ``httpx.Client`` to use (not closed by ``close``).
        http_async_client: An ``httpx.AsyncClient`` to use (not closed by ``aclose``).
        headers: Extra request headers.
    """

    #: Where the request goes, appended to ``base_url``.
    path: ClassVar[str] = "/rerank"
    #: The provider's public server root, or None when the user must name one.
    default_base_url: ClassVar[str | None] = None
    #: Environment variables holding the key, in order of preference.
    env_vars: ClassVar[tuple[str, ...]] = ()
    default_model: ClassVar[str | None] = None
    #: Documents per request the provider accepts (None: no documented limit).
    default_max_batch: ClassVar[int | None] = None
    #: Where the results sit in the answer and how their fields are named.
    results_key: ClassVar[str | None] = "results"
    score_key: ClassVar[str] = "relevance_score"

    backoff_base: float = 0.5
    backoff_max: float = 8.0

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        deadline: float = 120.0,
        max_batch: int | None = None,
        max_concurrency: int = 32,
        http_client: httpx.Client | None = None,
        http_async_client: httpx.AsyncClient | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        name = type(self).__name__
        self.model = model if model is not None else self.default_model
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ConfigurationError(f"{name}: model must be a non-empty str, got {model!r}")
        root = base_url if base_url is not None else self.default_base_url
        if root is None:
            raise ConfigurationError(
                f"{name} needs base_url, the root of your server (e.g. 'http://localhost:8000')"
            )
        self.base_url = _check_base_url(name, root)
        self.url = _join(self.base_url, self._route())
        _check_number(name, "timeout", timeout, positive=True)
        _check_number(name, "deadline", deadline, positive=True)
        _check_int(name, "max_retries", max_retries, minimum=0)
        _check_int(name, "max_concurrency", max_concurrency, minimum=1)
        if max_batch is not None:
            _check_int(name, "max_batch", max_batch, minimum=1)
        self.timeout = float(timeout)
        self.deadline = float(deadline)
        self.max_retries = max_retries
        self.max_batch = max_batch if max_batch is not None else self.default_max_batch
        self.max_concurrency = max_concurrency
        self._api_key = self._resolve_key(api_key)
        self._extra_headers = dict(headers or {})
        self._client = http_client
        self._owns_client = http_client is None
        self._injected_async_client = http_async_client
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._client_lock = threading.Lock()
        self._inflight = threading.BoundedSemaphore(max_concurrency)

    # -- configuration -------------------------------------------------------------------

    def _key_required(self) -> bool:
        """A key is required when talking to the provider's own public API."""
        return self.default_base_url is not None and self.base_url == self.default_base_url

    def _resolve_key(self, api_key: str | Secret | None) -> Secret | None:
        if isinstance(api_key, Secret):
            api_key = api_key.get_secret_value()
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigurationError(
                f"{type(self).__name__}: api_key must be a str, got {type(api_key).__name__}"
            )
        if not api_key:
            api_key = next((os.environ[v] for v in self.env_vars if os.environ.get(v)), None)
        if api_key:
            return Secret(api_key.strip())
        if self._key_required():
            names = " or ".join(self.env_vars)
            raise ConfigurationError(
                f"{type(self).__name__} needs an API key: pass api_key=... or set {names}"
            )
        return None

    @property
    def api_key(self) -> Secret | None:
        """The key as a ``Secret`` (never printed), or None."""
        return self._api_key

    def _headers(self) -> dict[str, str]:
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"milvus-rerank/{__version__}",
            **self._extra_headers,
        }
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers

    def _repr_fields(self) -> dict[str, Any]:
        return {"model": self.model, "base_url": self.base_url, "max_batch": self.max_batch}

    # -- the provider mapping (subclasses) -------------------------------------------------

    def _route(self) -> str:
        """The path appended to ``base_url`` (the class's ``path`` unless a provider picks)."""
        return self.path

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        """The JSON body for one request over ``documents``, asking for every score."""
        raise NotImplementedError

    def _results(self, body: Any) -> Any:
        """The list of per-document results inside a parsed answer."""
        if self.results_key is None:
            return body
        if not isinstance(body, dict) or self.results_key not in body:
            raise ValueError(f"expected a JSON object with {self.results_key!r}")
        return body[self.results_key]

    # -- scoring ---------------------------------------------------------------------------

    def _chunks(self, documents: list[str]) -> list[tuple[int, list[str]]]:
        size = self.max_batch or len(documents)
        return [
            (start, documents[start : start + size]) for start in range(0, len(documents), size)
        ]

    def _score(self, query: str, documents: list[str]) -> list[float]:
        chunks = self._chunks(documents)
        scores = [math.nan] * len(documents)
        if len(chunks) == 1:
            self._merge(scores, 0, len(documents), self._post(self._payload(query, documents)))
            return scores
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(chunks))) as pool:
            futures = {
                pool.submit(self._post, self._payload(query, chunk)): (start, len(chunk))
                for start, chunk in chunks
            }
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in done:
                if future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            for future, (start, count) in futures.items():
                self._merge(scores, start, count, future.result())
        return scores

    async def _ascore(self, query: str, documents: list[str]) -> list[float]:
        chunks = self._chunks(documents)
        scores = [math.nan] * len(documents)
        bodies = await _gather_or_cancel(
            [self._apost(self._payload(query, chunk)) for _, chunk in chunks]
        )
        for (start, chunk), body in zip(chunks, bodies, strict=True):
            self._merge(scores, start, len(chunk), body)
        return scores

    def _merge(self, scores: list[float], start: int, count: int, body: Any) -> None:
        """Validate one chunk's answer and write its scores at their global positions."""
        for index, score in self._validated(body, count):
            scores[start + index] = score

    def _validated(self, body: Any, count: int) -> Iterator[tuple[int, float]]:
        try:
            items = self._results(body)
        except ValueError as exc:
            raise self._invalid(
                f"unexpected answer shape: {exc}; got {describe_value(body)}"
            ) from None
        if not isinstance(items, list):
            raise self._invalid(f"results must be a list, got {describe_value(items)}")
        seen: set[int] = set()
        for item in items:
            if not isinstance(item, dict):
                raise self._invalid(f"a result must be an object, got {describe_value(item)}")
            index, score = item.get("index"), item.get(self.score_key)
            if isinstance(index, bool) or not isinstance(index, int):
                raise self._invalid(f"result index must be an int, got {describe_value(index)}")
            if not 0 <= index < count:
                raise self._invalid(f"result index {index} is out of range for {count} documents")
            if index in seen:
                raise self._invalid(f"result index {index} appears twice")
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise self._invalid(
                    f"{self.score_key} of index {index} must be a number, "
                    f"got {describe_value(score)}"
                )
            if not math.isfinite(score):
                raise self._invalid(f"{self.score_key} of index {index} is not finite: {score!r}")
            seen.add(index)
            yield index, float(score)
        if len(seen) != count:
            missing = sorted(set(range(count)) - seen)
            raise self._invalid(
                f"answer scored {len(seen)} of {count} documents; missing indices {missing[:10]}"
            )

    def _invalid(
        self, message: str, response: httpx.Response | None = None
    ) -> InvalidResponseError:
        return InvalidResponseError(
            f"{self.provider} returned an invalid rerank answer: {message}",
            provider=self.provider,
            status_code=None if response is None else response.status_code,
            request_id=None if response is None else _request_id(response),
        )

    # -- one request, with retries ---------------------------------------------------------

    def _post(self, payload: dict[str, Any]) -> Any:
        client = self._sync_client()
        started = time.monotonic()
        attempt = 0
        with self._inflight:
            while True:
                remaining = self.deadline - (time.monotonic() - started)
                try:
                    response = client.post(
                        self.url,
                        json=payload,
                        headers=self._headers(),
                        timeout=min(self.timeout, max(remaining, 0.001)),
                    )
                    return self._answer(response)
                except _Retry as retry:
                    failure = retry.attempt
                except httpx.HTTPError as exc:
                    failure = self._transport_failure(exc)
                delay = self._next_delay(failure, attempt, started)
                time.sleep(delay)
                attempt += 1

    async def _apost(self, payload: dict[str, Any]) -> Any:
        state = self._loop_state()
        client = self._injected_async_client or state.client
        assert client is not None  # noqa: S101 - _loop_state creates one when none is injected
        started = time.monotonic()
        attempt = 0
        async with state.semaphore:
            while True:
                remaining = self.deadline - (time.monotonic() - started)
                try:
                    response = await client.post(
                        self.url,
                        json=payload,
                        headers=self._headers(),
                        timeout=min(self.timeout, max(remaining, 0.001)),
                    )
                    return self._answer(response)
                except _Retry as retry:
                    failure = retry.attempt
                except httpx.HTTPError as exc:
                    failure = self._transport_failure(exc)
                delay = self._next_delay(failure, attempt, started)
                await asyncio.sleep(delay)
                attempt += 1

    def _answer(self, response: httpx.Response) -> Any:
        """The parsed JSON of a 2xx answer; raise the typed error, or ``_Retry``, otherwise."""
        status = response.status_code
        if 200 <= status < 300:
            try:
                return json.loads(response.content)
            except (ValueError, UnicodeDecodeError):
                kind = response.headers.get("content-type", "no content type")
                raise self._invalid(
                    f"HTTP {status} with a body that is not JSON ({kind}): "
                    f"{_clip(response.text)!r}",
                    response,
                ) from None
        message = self._error_text(response)
        request_id = _request_id(response)
        context: dict[str, Any] = {
            "provider": self.provider,
            "status_code": status,
            "request_id": request_id,
        }
        if status in (401, 403):
            raise AuthenticationError(message, **context)
        if status == 429:
            wait_for = parse_retry_after(response.headers.get("retry-after"))
            error = RateLimitError(message, retry_after=wait_for, **context)
            raise _Retry(_Attempt(error, True, wait_for))
        if status in _RETRY_STATUS or status >= 500:
            wait_for = parse_retry_after(response.headers.get("retry-after"))
            raise _Retry(_Attempt(ProviderUnavailableError(message, **context), True, wait_for))
        raise ProviderError(message, **context)

    def _error_text(self, response: httpx.Response) -> str:
        detail: Any = None
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict):
            for key in ("message", "detail", "error"):
                if body.get(key):
                    detail = body[key]
                    break
            if isinstance(detail, dict):
                detail = detail.get("message", detail)
        if detail is None:
            detail = _clip(response.text) or response.reason_phrase
        text = f"{self.provider} rerank failed with HTTP {response.status_code}: {detail}"
        request_id = _request_id(response)
        if request_id:
            text += f" (request id {request_id})"
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        """Remove the key from text that came from the server, in case it echoes it."""
        if self._api_key is not None and self._api_key.get_secret_value():
            text = text.replace(self._api_key.get_secret_value(), "**********")
        return text

    def _transport_failure(self, exc: httpx.HTTPError) -> _Attempt:
        if isinstance(exc, httpx.DecodingError):
            raise self._invalid(f"the answer could not be decoded: {exc}") from exc
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            raise ConfigurationError(f"{self.provider}: cannot post to {self.url}: {exc}") from exc
        kind = type(exc).__name__
        message = self._scrub(f"{self.provider} could not be reached at {self.url}: {kind}: {exc}")
        return _Attempt(ProviderUnavailableError(message, provider=self.provider), True)

    def _next_delay(self, failure: _Attempt, attempt: int, started: float) -> float:
        """Seconds to wait before the next attempt, or raise the failure when out of budget."""
        error = failure.error
        if not failure.retryable or attempt >= self.max_retries:
            raise error
        if failure.retry_after is not None:
            delay = failure.retry_after
        else:
            delay = min(self.backoff_max, self.backoff_base * 2**attempt)
            delay *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not cryptography
        remaining = self.deadline - (time.monotonic() - started)
        if delay >= remaining:
            error.args = (f"{error.args[0]} (gave up: the {self.deadline:g}s deadline is near)",)
            raise error
        logger.info(
            "%s: %s; retry %d of %d in %.2fs",
            self.provider,
            type(error).__name__,
            attempt + 1,
            self.max_retries,
            delay,
        )
        return delay

    # -- clients -----------------------------------------------------------------------------

    def _sync_client(self) -> httpx.Client:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = httpx.Client(limits=self._limits())
        return self._client

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
        )

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            client = None
            if self._injected_async_client is None:
                client = httpx.AsyncClient(limits=self._limits())
            state = _LoopState(client=client, semaphore=asyncio.Semaphore(self.max_concurrency))
            self._loops[loop] = state
        return state

    def close(self) -> None:
        """Close the sync client this reranker created; it is re-created on next use."""
        with self._client_lock:
            if self._client is not None and self._owns_client:
                self._client.close()
                self._client = None

    async def aclose(self) -> None:
        """Close the clients this reranker created (sync, and async on this loop)."""
        self.close()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - aclose is always awaited inside a loop
            return
        state = self._loops.pop(loop, None)
        if state is not None and state.client is not None:
            await state.client.aclose()


class _Retry(Exception):
    """Internal: an answer that may be worth another attempt."""

    def __init__(self, attempt: _Attempt) -> None:
        super().__init__(attempt.error)
        self.attempt = attempt


async def _gather_or_cancel(coros: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run awaitables concurrently; on the first failure cancel the others and raise it."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    if pending:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return [task.result() for task in tasks]


def _request_id(response: httpx.Response) -> str | None:
    for header in ("x-request-id", "request-id", "x-trace-id"):
        if response.headers.get(header):
            return response.headers[header]
    return None


def _clip(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_base_url(owner: str, url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{owner}: base_url must be an http(s) URL, got {url!r}")
    url = url.strip().rstrip("/")
    parsed = httpx.URL(url) if "://" in url else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(f"{owner}: base_url must be an http(s) URL, got {url!r}")
    return url


def server_root(base_url: str) -> str:
    """The server root of a base URL that may end in a version segment (``.../v1``)."""
    return _VERSION_SUFFIX.sub("", base_url)


def _join(base_url: str, path: str) -> str:
    """Append the provider path; a root ending in a version segment keeps its version."""
    if _VERSION_SUFFIX.search(base_url) and _VERSION_PREFIX.match(path):
        path = path[path.index("/", 1) :]
    return base_url + path


def _check_number(owner: str, name: str, value: object, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):  # type: ignore[operator]
        raise ConfigurationError(f"{owner}: {name} must be a positive number, got {value!r}")


def _check_int(owner: str, name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
