"""One HTTP layer for every API reranker: clients, timeouts, retries, chunking, validation.

Provider modules only say where to post (``path``), what to send (``_payload``) and where the
results sit in the answer (``_results``). Everything else is here, once:

* ``httpx.Client`` / ``httpx.AsyncClient`` created lazily (one async client per event loop),
  or injected by the caller; closable; the reranker is a (async) context manager.
* Retries as one ``RetryPolicy`` (``milvus_rerank.retry``) decides: by default with
  exponential backoff and jitter on connection errors, timeouts, 408, 409, 429 and 5xx,
  honouring ``Retry-After`` (seconds or HTTP date), all within a total deadline; never on
  other 4xx. The sync and async paths ask the same policy and differ only in how they sleep.
* Document lists longer than the provider's per-request limit go out in chunks, concurrently
  up to ``max_concurrency`` requests in flight per reranker, and are merged back by index.
* What Milvus needs to call the same server itself (``milvus_function_params``): the shared
  pieces (raw keys stay out of a server's params; Milvus Lite's Cohere v2 provider) are here.
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
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import httpx

from .._version import __version__
from ..base import MilvusTarget, Reranker, describe_value
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidResponseError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
)
from ..retry import FailedAttempt, RetryPolicy

__all__ = ["HTTPReranker", "Secret", "parse_retry_after", "server_root"]

logger = logging.getLogger("milvus_rerank.http")

_T = TypeVar("_T")
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
class _LoopState:
    """Per-event-loop async client and in-flight bound."""

    client: httpx.AsyncClient | None
    semaphore: asyncio.Semaphore


class HTTPReranker(Reranker):
    """Base of the API rerankers: one request and response mapping per subclass.

    Args:
        model_name: The provider's model name (``None`` for servers that serve one model).
        api_key: The key, else read from the provider's environment variables.
        base_url: The server root (``https://api.cohere.com``); the provider appends its path.
            A root that already ends in a version segment (``.../v1``) is not doubled.
        timeout: Seconds for one HTTP request (connect, read, write, pool).
        retry: When and how failed requests are retried, and the deadline of a whole call
            (``RetryPolicy()`` by default: 3 retries within 120 s).
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

    def __init__(
        self,
        model_name: str | None = None,
        *,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_batch: int | None = None,
        max_concurrency: int = 32,
        http_client: httpx.Client | None = None,
        http_async_client: httpx.AsyncClient | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        name = type(self).__name__
        self.model_name = model_name if model_name is not None else self.default_model
        if self.model_name is not None and (
            not isinstance(self.model_name, str) or not self.model_name.strip()
        ):
            raise ConfigurationError(
                f"{name}: model_name must be a non-empty str, got {model_name!r}"
            )
        root = base_url if base_url is not None else self.default_base_url
        if root is None:
            raise ConfigurationError(
                f"{name} needs base_url, the root of your server (e.g. 'http://localhost:8000')"
            )
        self.base_url = _check_base_url(name, root)
        self.url = _join(self.base_url, self._route())
        _check_number(name, "timeout", timeout, positive=True)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(
                f"{name}: retry must be a milvus_rerank.RetryPolicy, got {describe_value(retry)}"
            )
        _check_int(name, "max_concurrency", max_concurrency, minimum=1)
        if max_batch is not None:
            _check_int(name, "max_batch", max_batch, minimum=1)
        self.timeout = float(timeout)
        self.retry = retry if retry is not None else RetryPolicy()
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
        return {
            "model_name": self.model_name,
            "base_url": self.base_url,
            "max_batch": self.max_batch,
        }

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

    # -- Milvus server-side rerank (providers that Milvus can call override the hook) ------

    def milvus_function_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """Refuse: Milvus has no provider for this API (providers it can call override this)."""
        name = type(self).__name__
        if target == "milvus-lite":
            raise ConfigurationError(
                f"Milvus Lite's only server-side rerank provider is 'cohere' (Cohere's v2 API); "
                f"a {name} does not speak it. Use target='milvus' with a Milvus server, or rerank "
                "client-side with milvus_rerank.milvus.rerank_hits."
            )
        raise ConfigurationError(
            f"Milvus cannot call a {name} itself: its server-side model rerank has no provider "
            f"for the {self.provider} API. Rerank client-side with "
            "milvus_rerank.milvus.rerank_hits instead."
        )

    def _milvus_lite_cohere_params(self) -> dict[str, Any]:
        """Milvus Lite's one rerank provider, ``cohere``, aimed at this server's Cohere v2 API.

        Milvus Lite runs in this process, so it is handed the key itself ("EMPTY" for none).
        """
        key = self._api_key.get_secret_value() if self._api_key is not None else "EMPTY"
        return {
            "provider": "cohere",
            "model_name": self.model_name or "default",
            "api_key": key,
            "base_url": server_root(self.base_url) + "/v2",
        }

    def _with_milvus_credential(
        self, params: dict[str, Any], credential: str | None, *, server_knows_key: bool
    ) -> dict[str, Any]:
        """Add ``credential`` (a name in the server's ``milvus.yaml``): never a raw key.

        ``server_knows_key``: the Milvus provider finds a key without one (from its
        ``milvus.yaml`` or environment), so a keyed reranker needs no ``credential``.
        """
        if credential is not None:
            if not isinstance(credential, str) or not credential.strip():
                raise ConfigurationError(
                    f"credential must name a credential of milvus.yaml, got {credential!r}"
                )
            return {**params, "credential": credential}
        if self._api_key is not None and not server_knows_key:
            raise ConfigurationError(
                f"this {type(self).__name__} sends an API key, but a Milvus server never takes a "
                "raw key in a Function's params: add the key to the credential section of "
                "milvus.yaml and pass credential='<its name>'"
            )
        return params

    def _public_api_for_milvus(self, milvus_provider: str) -> None:
        """Refuse a self-hosted ``base_url`` for a Milvus provider that calls the public API.

        Milvus 2.6's ``milvus_provider`` reads its URL from the server's ``milvus.yaml``, not from
        the Function's params, so passing this reranker's ``base_url`` on is impossible and
        dropping it would silently swap endpoints.
        """
        if self.default_base_url is None or server_root(self.base_url) == server_root(
            self.default_base_url
        ):
            return
        raise ConfigurationError(
            f"this {type(self).__name__} calls {self.base_url}, but a Milvus server's "
            f"{milvus_provider!r} rerank provider calls the URL set in its milvus.yaml, not one "
            "from the Function's params. Set that URL in milvus.yaml and build the reranker "
            "without base_url, or rerank client-side with milvus_rerank.milvus.rerank_hits."
        )

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
        retries = 0
        with self._inflight:
            while True:
                try:
                    response = client.post(
                        self.url,
                        json=payload,
                        headers=self._headers(),
                        timeout=self._request_timeout(started),
                    )
                    return self._answer(response)
                except _Failed as failed:
                    failure = failed.failure
                except httpx.HTTPError as exc:
                    failure = self._transport_failure(exc)
                time.sleep(self._wait_or_give_up(failure, retries, started))
                retries += 1

    async def _apost(self, payload: dict[str, Any]) -> Any:
        state = self._loop_state()
        client = self._injected_async_client or state.client
        assert client is not None  # noqa: S101 - _loop_state creates one when none is injected
        started = time.monotonic()
        retries = 0
        async with state.semaphore:
            while True:
                try:
                    response = await client.post(
                        self.url,
                        json=payload,
                        headers=self._headers(),
                        timeout=self._request_timeout(started),
                    )
                    return self._answer(response)
                except _Failed as failed:
                    failure = failed.failure
                except httpx.HTTPError as exc:
                    failure = self._transport_failure(exc)
                await asyncio.sleep(self._wait_or_give_up(failure, retries, started))
                retries += 1

    def _request_timeout(self, started: float) -> float:
        """One request's timeout: ``timeout``, cut to what is left of the call's deadline."""
        remaining = self.retry.deadline - (time.monotonic() - started)
        return min(self.timeout, max(remaining, 0.001))

    def _wait_or_give_up(self, failure: FailedAttempt, retries: int, started: float) -> float:
        """Seconds to sleep before the next attempt, as the policy decides; else raise."""
        step = self.retry.decide(failure, retries, time.monotonic() - started)
        if isinstance(step, ProviderError):
            raise step
        logger.info(
            "%s: %s; retry %d of %d in %.2fs",
            self.provider,
            failure.error.__name__,
            retries + 1,
            self.retry.max_retries,
            step,
        )
        return step

    def _answer(self, response: httpx.Response) -> Any:
        """The parsed JSON of a 2xx answer; raise ``_Failed`` describing any other answer."""
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
        error: type[ProviderError] = ProviderError
        if status in (401, 403):
            error = AuthenticationError
        elif status == 429:
            error = RateLimitError
        elif status in (408, 409) or status >= 500:
            error = ProviderUnavailableError
        raise _Failed(
            FailedAttempt(
                error,
                self._error_text(response),
                self.provider,
                status_code=status,
                request_id=_request_id(response),
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        )

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

    def _transport_failure(self, exc: httpx.HTTPError) -> FailedAttempt:
        if isinstance(exc, httpx.DecodingError):
            raise self._invalid(f"the answer could not be decoded: {exc}") from exc
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            raise ConfigurationError(f"{self.provider}: cannot post to {self.url}: {exc}") from exc
        kind = type(exc).__name__
        message = self._scrub(f"{self.provider} could not be reached at {self.url}: {kind}: {exc}")
        transport: Literal["connect", "timeout"] = (
            "timeout" if isinstance(exc, httpx.TimeoutException) else "connect"
        )
        return FailedAttempt(ProviderUnavailableError, message, self.provider, transport=transport)

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


class _Failed(Exception):
    """Internal: a non-2xx answer, for the retry policy to judge."""

    def __init__(self, failure: FailedAttempt) -> None:
        super().__init__(failure.message)
        self.failure = failure


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
