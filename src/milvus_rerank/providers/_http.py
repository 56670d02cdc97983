"""One HTTP layer for every API reranker: clients, timeouts, retries, chunking, validation.

Provider modules only say where to post (``path``), what to send (``_payload``), where the
results sit in the answer (``_results``) and what it reports it consumed (``_usage``).
Everything else is here, once:

* Every request runs on an ``httpx.AsyncClient``: one per event loop for ``arerank`` (closed
  when its loop shuts down), and one on a private background loop for ``rerank``, so both
  paths share one code path, one deadline and one fail-fast chunking. An injected
  ``httpx.Client`` is used as given on the sync path instead.
* Retries as one ``RetryPolicy`` (``milvus_rerank.retry``) decides: by default with
  exponential backoff and jitter on connection errors, timeouts, 408, 409, 429 and 5xx,
  honouring ``Retry-After`` (seconds or HTTP date); never on other 4xx. The policy's
  ``deadline`` bounds a whole call, whatever the server does (slow headers, a trickled body).
* Document lists longer than the provider's per-request limit go out in chunks, at most
  ``max_concurrency`` requests in flight per reranker over all its threads and event loops,
  merged back by index; the first failing chunk ends the call at once.
* Every answer is read streamed up to ``max_response_bytes`` (decoded) and validated: each
  index in range, none duplicated, none missing, every score a finite number. Anything else
  raises ``InvalidResponseError`` and no ranking is made.
* Usage: each answer's reported consumption (``_usage``) is summed over the call's chunks into
  ``RerankResponse.usage``. A usage field that is missing or malformed is None, never a
  guess, and never fails the ranking.
* Secrets: the key (and any secret-looking extra header) is checked at construction, sent
  only in its header, and scrubbed from every message built from server text, which is then
  clipped; ``base_url`` may not carry credentials, a query or a fragment.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import importlib.util
import json
import logging
import math
import os
import re
import ssl
import threading
import time
import urllib.parse
import weakref
from collections.abc import AsyncGenerator, Awaitable, Iterator, Sequence
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
from ..results import MAX_USAGE_COUNT, Usage, bounded_count
from ..retry import FailedAttempt, RetryPolicy

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_USAGE_COUNT",
    "MIN_KEY_LENGTH",
    "HTTPReranker",
    "Secret",
    "parse_retry_after",
    "server_root",
]

logger = logging.getLogger("milvus_rerank.http")

_T = TypeVar("_T")
_VERSION_SUFFIX = re.compile(r"/v\d+$")
_VERSION_PREFIX = re.compile(r"^/v\d+/")

#: The largest answer read, after decompression (a gzip bomb stops here).
DEFAULT_MAX_RESPONSE_BYTES = 32 * 2**20
#: Error bodies are read only this far: enough to say what went wrong.
_ERROR_BODY_BYTES = 64 * 2**10
#: Keys shorter than this are refused: no real key is, and scrubbing a short one from
#: messages would garble them (scrubbing "a" replaces every "a").
MIN_KEY_LENGTH = 8
#: Any text that came from a server is clipped to this many characters, after scrubbing.
_SERVER_TEXT_LIMIT = 300
_REDACTED = "**********"
#: Extra headers whose values are treated (stored, scrubbed) as secrets.
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|passw|session|credential", re.I)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: The proxy variables httpx reads, and the proxy schemes it speaks.
_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


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
        except (TypeError, ValueError, OverflowError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


# -- one bound on requests in flight, shared by threads and event loops ---------------------


class _Slots:
    """A counting semaphore that threads and any number of event loops share.

    ``asyncio.Semaphore`` belongs to one loop; this one hands a freed slot to the oldest
    waiter, a thread (woken by an event) or a task on any loop (woken through its loop).
    """

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._free = size
        self._waiters: collections.deque[_ThreadWaiter | _TaskWaiter] = collections.deque()

    def acquire(self, timeout: float) -> bool:
        """Take a slot, blocking this thread at most ``timeout`` seconds."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            waiter = _ThreadWaiter()
            self._waiters.append(waiter)
        if waiter.event.wait(max(timeout, 0.0)):
            return True
        with self._lock:
            if waiter.event.is_set():  # granted just as the wait ran out
                return True
            waiter.abandoned = True
            self._waiters.remove(waiter)
        return False

    async def acquire_async(self) -> None:
        """Take a slot without blocking the event loop (cancel the task to stop waiting)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            waiter = _TaskWaiter(self, loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                try:
                    self._waiters.remove(waiter)
                    queued = True
                except ValueError:
                    queued = False
            if not queued and waiter.future.done() and not waiter.future.cancelled():
                self.release()  # the slot arrived as the task was cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a slot back: to the oldest waiter still waiting, else to the pool."""
        with self._lock:
            while self._waiters:
                if self._waiters.popleft().grant():
                    return
            self._free += 1


class _ThreadWaiter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.abandoned = False

    def grant(self) -> bool:
        if self.abandoned:
            return False
        self.event.set()
        return True


class _TaskWaiter:
    def __init__(
        self, slots: _Slots, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]
    ) -> None:
        self.slots, self.loop, self.future = slots, loop, future

    def grant(self) -> bool:
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # its loop is closed
            return False
        return True

    def _deliver(self) -> None:
        if self.future.done():  # cancelled meanwhile: the slot goes to the next waiter
            self.slots.release()
        else:
            self.future.set_result(None)


# -- the private loop that runs the sync path -----------------------------------------------


class _BackgroundLoop:
    """One daemon thread running an event loop, for every reranker's sync calls."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid: int = 0

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid() or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="milvus-rerank-http", daemon=True
                )
                thread.start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop

    @classmethod
    def current(cls) -> asyncio.AbstractEventLoop | None:
        """The loop if it already runs in this process, else None."""
        with cls._lock:
            return cls._loop if cls._loop is not None and cls._pid == os.getpid() else None


@dataclass
class _LoopState:
    """The async client of one event loop; ``guard`` closes it when the loop shuts down."""

    client: httpx.AsyncClient
    guard: AsyncGenerator[None, None]


async def _close_with_loop(
    states: dict[asyncio.AbstractEventLoop, _LoopState],
    lock: threading.Lock,
    loop: asyncio.AbstractEventLoop,
    client: httpx.AsyncClient,
) -> AsyncGenerator[None, None]:
    """Forget ``loop``'s state and close its client when the loop shuts down.

    Suspended once per loop; ``loop.shutdown_asyncgens()`` (which ``asyncio.run`` calls) or
    ``aclose`` finishes it.
    """
    try:
        yield
    finally:
        with lock:
            if states.get(loop) is not None and states[loop].client is client:
                del states[loop]
        await client.aclose()


def _close_states(
    states: dict[asyncio.AbstractEventLoop, _LoopState], lock: threading.Lock
) -> None:
    """Schedule closing every client in ``states`` on its own loop (loops that still run)."""
    with lock:
        pending = list(states.items())
        states.clear()
    for loop, state in pending:
        if loop.is_closed():
            continue
        try:
            loop.call_soon_threadsafe(_spawn_close, loop, state.guard)
        except RuntimeError:  # closed meanwhile
            continue


_closing: set[asyncio.Task[None]] = set()


def _spawn_close(loop: asyncio.AbstractEventLoop, guard: AsyncGenerator[None, None]) -> None:
    task = loop.create_task(guard.aclose())
    _closing.add(task)  # a task only weakly held by its loop could vanish half-way
    task.add_done_callback(_closing.discard)


class HTTPReranker(Reranker):
    """Base of the API rerankers: one request and response mapping per subclass.

    Args:
        model_name: The provider's model name (``None`` for servers that serve one model).
        api_key: The key, else read from the provider's environment variables. Printable
            ASCII without whitespace, at least ``MIN_KEY_LENGTH`` (8) characters.
        base_url: The server root (``https://api.cohere.com``); the provider appends its path.
            A root that already ends in a version segment (``.../v1``) is not doubled. No
            credentials (``user:pass@``), query or fragment: keys go in ``api_key`` or
            ``headers``.
        timeout: Seconds for one HTTP request (connect, read, write, pool).
        retry: When and how failed requests are retried, and the deadline of a whole call
            (``RetryPolicy()`` by default: 3 retries within 120 s).
        max_batch: Documents per request; longer lists go out in chunks.
        max_concurrency: Requests in flight at once per reranker, over all its calls,
            threads and event loops.
        max_response_bytes: The largest answer accepted, decoded (32 MiB by default).
        http_client: An ``httpx.Client`` for the sync path (not closed by ``close``). The
            deadline is then checked between reads, so a server that trickles headers is
            bounded only by this client's own timeouts.
        http_async_client: An ``httpx.AsyncClient`` to use (not closed by ``aclose``).
        headers: Extra request headers (values of auth-, key- or token-like names are kept
            and scrubbed as secrets).
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
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        http_client: httpx.Client | None = None,
        http_async_client: httpx.AsyncClient | None = None,
        headers: dict[str, str] | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigurationError(_unknown_options(type(self).__name__, unknown))
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
        _check_int(name, "max_response_bytes", max_response_bytes, minimum=1024)
        if max_batch is not None:
            _check_int(name, "max_batch", max_batch, minimum=1)
        self.timeout = float(timeout)
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_batch = max_batch if max_batch is not None else self.default_max_batch
        self.max_concurrency = max_concurrency
        self.max_response_bytes = max_response_bytes
        self._api_key = self._resolve_key(api_key)
        self._extra_headers = _check_headers(name, headers)
        self._client = http_client
        self._injected_async_client = http_async_client
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._loops_lock = threading.Lock()
        # A reranker dropped without close(): its clients' idle sockets would live on in
        # their loops (the private one never ends), so closing them is scheduled there.
        weakref.finalize(self, _close_states, self._loops, self._loops_lock)
        self._slots = _Slots(max_concurrency)
        self._closes = 0  # bumped by close/aclose: a call that sees it change was closed on

    # -- configuration -------------------------------------------------------------------

    def _key_required(self) -> bool:
        """A key is required when talking to the provider's own public API."""
        return self.default_base_url is not None and self.base_url == self.default_base_url

    def _resolve_key(self, api_key: str | Secret | None) -> Secret | None:
        owner = type(self).__name__
        if isinstance(api_key, Secret):
            api_key = api_key.get_secret_value()
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigurationError(
                f"{owner}: api_key must be a str, got {type(api_key).__name__}"
            )
        if api_key:
            return Secret(_check_key(owner, api_key, "api_key"))
        for var in self.env_vars:
            value = os.environ.get(var)
            if value:
                return Secret(_check_key(owner, value, f"the environment variable {var}"))
        if self._key_required():
            names = " or ".join(self.env_vars)
            raise ConfigurationError(f"{owner} needs an API key: pass api_key=... or set {names}")
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
            **{
                k: v.get_secret_value() if isinstance(v, Secret) else v
                for k, v in self._extra_headers.items()
            },
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

    def _usage(self, body: Any) -> Usage:
        """What one parsed answer reports it consumed (tokens, units); nothing by default.

        Providers read their documented usage field with ``_usage_count``; the HTTP layer
        counts the request itself and sums the answers of a call's chunks.
        """
        return Usage()

    def _usage_count(self, body: Any, *path: str) -> int | None:
        """The count at ``body[path[0]][path[1]]...``, or None where it is absent or null.

        A value that is no count (a string, a bool, a negative or fractional number, one past
        ``MAX_USAGE_COUNT``) is None too: usage never fails a ranking. It is logged at DEBUG
        by its field name and type only, never its value (server text could echo a key).
        """
        value = body
        for depth, key in enumerate(path):
            if not isinstance(value, dict):
                if depth and value is not None:
                    self._bad_usage(path[:depth], value)
                return None
            value = value.get(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad_usage(path, value)
            return None
        if not 0 <= value <= MAX_USAGE_COUNT:
            self._bad_usage(path, value, "out of range")
            return None
        return value

    def _bad_usage(self, path: Sequence[str], value: object, why: str = "not a count") -> None:
        logger.debug(
            "%s: usage field %s ignored: %s (%s)",
            self.provider,
            ".".join(path),
            why,
            type(value).__name__,
        )

    def _answer_usage(self, body: Any) -> Usage:
        """One answer's ``Usage``: what ``_usage`` reads, plus the request itself."""
        try:
            usage = self._usage(body)
        except Exception as exc:  # noqa: BLE001 - a usage parser must never fail a ranking
            logger.debug("%s: usage could not be read (%s)", self.provider, type(exc).__name__)
            usage = Usage()
        return Usage(usage.tokens, usage.search_units, usage.rerank_units, requests=1)

    # -- Milvus server-side rerank (providers that Milvus can call override the hook) ------

    def _milvus_params(
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
        return self._score_usage(query, documents)[0]

    async def _ascore(self, query: str, documents: list[str]) -> list[float]:
        return (await self._ascore_usage(query, documents))[0]

    def _score_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        if self._client is not None:
            return self._score_with_sync_client(self._client, query, documents)
        future = asyncio.run_coroutine_threadsafe(
            self._score_async(query, documents, private=True), _BackgroundLoop.get()
        )
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: stop the requests too
            raise

    async def _ascore_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        return await self._score_async(query, documents, private=False)

    async def _score_async(
        self, query: str, documents: list[str], *, private: bool
    ) -> tuple[list[float], Usage]:
        closes = self._closes
        deadline = time.monotonic() + self.retry.deadline
        client = (
            self._injected_async_client
            if self._injected_async_client is not None and not private
            else (await self._aloop_state()).client
        )
        chunks = self._chunks(documents)
        scores = [math.nan] * len(documents)
        bodies = await _gather_or_cancel(
            [
                self._apost(client, self._payload(query, chunk), deadline, closes)
                for _, chunk in chunks
            ]
        )
        for (start, chunk), body in zip(chunks, bodies, strict=True):
            self._merge(scores, start, len(chunk), body)
        return scores, _call_usage([self._answer_usage(body) for body in bodies])

    def _score_with_sync_client(
        self, client: httpx.Client, query: str, documents: list[str]
    ) -> tuple[list[float], Usage]:
        closes = self._closes
        deadline = time.monotonic() + self.retry.deadline
        chunks = self._chunks(documents)
        scores = [math.nan] * len(documents)
        abort = threading.Event()
        if len(chunks) == 1:
            body = self._post(client, self._payload(query, documents), deadline, closes, abort)
            self._merge(scores, 0, len(documents), body)
            return scores, self._answer_usage(body)
        # No ``with``: leaving it would wait for every slow chunk after one already failed.
        pool = ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(chunks)), thread_name_prefix="rerank"
        )
        try:
            futures = {
                pool.submit(
                    self._post, client, self._payload(query, chunk), deadline, closes, abort
                ): (start, len(chunk))
                for start, chunk in chunks
            }
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    raise error
            usages = []
            for future, (start, count) in futures.items():
                body = future.result()
                self._merge(scores, start, count, body)
                usages.append(self._answer_usage(body))
        finally:
            abort.set()  # the chunks still running stop at their next read and close
            pool.shutdown(wait=False, cancel_futures=True)
        return scores, _call_usage(usages)

    def _merge(self, scores: list[float], start: int, count: int, body: Any) -> None:
        """Validate one chunk's answer and write its scores at their global positions."""
        for index, score in self._validated(body, count, start, len(scores)):
            scores[start + index] = score

    def _validated(
        self, body: Any, count: int, start: int = 0, total: int | None = None
    ) -> Iterator[tuple[int, float]]:
        """The (index, score) pairs of one answer over ``count`` documents, each checked.

        When the answer covers a chunk (``documents[start:start + count]`` of ``total``), every
        message names that chunk, and missing documents by their position in the whole list.
        """
        chunked = total is not None and total != count
        where = f" (the chunk of documents[{start}:{start + count}])" if chunked else ""

        def invalid(message: str) -> InvalidResponseError:
            return self._invalid(message + where)

        try:
            items = self._results(body)
        except ValueError as exc:
            raise invalid(f"unexpected answer shape: {exc}; got {self._describe(body)}") from None
        if not isinstance(items, list):
            raise invalid(f"results must be a list, got {self._describe(items)}")
        seen: set[int] = set()
        for item in items:
            if not isinstance(item, dict):
                raise invalid(f"a result must be an object, got {self._describe(item)}")
            index, score = item.get("index"), item.get(self.score_key)
            if isinstance(index, bool) or not isinstance(index, int):
                raise invalid(f"result index must be an int, got {self._describe(index)}")
            if not 0 <= index < count:
                raise invalid(
                    f"result index {self._describe(index)} is out of range for {count} documents"
                )
            if index in seen:
                raise invalid(f"result index {index} appears twice")
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise invalid(
                    f"{self.score_key} of index {index} must be a number, "
                    f"got {self._describe(score)}"
                )
            try:
                value = float(score)
            except OverflowError:  # an int past float's range (a 400-digit score)
                value = math.inf
            if not math.isfinite(value):
                raise invalid(
                    f"{self.score_key} of index {index} is not finite: {self._describe(score)}"
                )
            seen.add(index)
            yield index, value
        if len(seen) != count:
            missing = sorted(start + i for i in set(range(count)) - seen)
            raise invalid(
                f"answer scored {len(seen)} of {count} documents; missing documents{missing[:10]}"
            )

    def _invalid(
        self, message: str, response: httpx.Response | None = None
    ) -> InvalidResponseError:
        return InvalidResponseError(
            self._safe(f"{self.provider} returned an invalid rerank answer: {message}", 1000),
            provider=self.provider,
            status_code=None if response is None else response.status_code,
            request_id=None if response is None else self._request_id(response),
        )

    # -- server text: scrubbed, then clipped ----------------------------------------------

    def _secrets(self) -> Iterator[str]:
        values = [self._api_key] if self._api_key is not None else []
        values += [v for v in self._extra_headers.values() if isinstance(v, Secret)]
        for secret in values:
            raw = secret.get_secret_value()
            if len(raw) >= MIN_KEY_LENGTH:
                # As sent, and as a repr, JSON or URL-encoding would spell it.
                yield from {
                    raw,
                    repr(raw)[1:-1],
                    json.dumps(raw)[1:-1],
                    urllib.parse.quote(raw, safe=""),
                }

    def _scrub(self, text: str) -> str:
        """Remove every secret from text that may hold server text, in case it echoes one."""
        for secret in sorted(self._secrets(), key=len, reverse=True):
            text = text.replace(secret, _REDACTED)
        return text

    def _safe(self, text: str, limit: int = _SERVER_TEXT_LIMIT) -> str:
        """Server text fit for a message: scrubbed first, then one line clipped to ``limit``."""
        return _clip(self._scrub(text), limit)

    def _describe(self, value: object) -> str:
        """``describe_value`` for a value from an answer: its repr scrubbed before clipping."""
        return f"{type(value).__name__} {self._safe(repr(value), 60)}"

    def _request_id(self, response: httpx.Response) -> str | None:
        for header in ("x-request-id", "request-id", "x-trace-id"):
            if response.headers.get(header):
                return self._safe(response.headers[header], 100)
        return None

    # -- one request, with retries ---------------------------------------------------------

    async def _apost(
        self, client: httpx.AsyncClient, payload: dict[str, Any], deadline: float, closes: int
    ) -> Any:
        started = deadline - self.retry.deadline
        try:
            await asyncio.wait_for(self._slots.acquire_async(), self._remaining(deadline))
        except asyncio.TimeoutError:
            raise self._deadline_failure(deadline, "waiting for a free request slot").build(
                f"max_concurrency={self.max_concurrency}"
            ) from None
        try:
            retries = 0
            while True:
                try:
                    return await asyncio.wait_for(
                        self._attempt(client, payload, deadline), self._remaining(deadline)
                    )
                except _Failed as failed:
                    failure = failed.failure
                except asyncio.TimeoutError:
                    failure = self._deadline_failure(deadline, "answering")
                except (httpx.HTTPError, RuntimeError) as exc:
                    failure = self._transport_failure(exc, client, closes)
                await asyncio.sleep(self._wait_or_give_up(failure, retries, started))
                self._check_open(client, closes)
                retries += 1
        finally:
            self._slots.release()

    async def _attempt(
        self, client: httpx.AsyncClient, payload: dict[str, Any], deadline: float
    ) -> Any:
        request = client.build_request(
            "POST",
            self.url,
            json=payload,
            headers=self._headers(),
            timeout=self._request_timeout(deadline),
        )
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            reader = _BodyReader(self, response)
            async for chunk in response.aiter_bytes():
                if reader.add(chunk):
                    break
        finally:
            await response.aclose()
        return self._answer(response, reader.content())

    def _post(
        self,
        client: httpx.Client,
        payload: dict[str, Any],
        deadline: float,
        closes: int,
        abort: threading.Event,
    ) -> Any:
        """The sync path over an injected ``httpx.Client``: the deadline checked per read."""
        started = deadline - self.retry.deadline
        if not self._slots.acquire(self._remaining(deadline)):
            raise self._deadline_failure(deadline, "waiting for a free request slot").build(
                f"max_concurrency={self.max_concurrency}"
            )
        try:
            retries = 0
            while True:
                try:
                    return self._attempt_sync(client, payload, deadline, abort)
                except _Failed as failed:
                    failure = failed.failure
                except (httpx.HTTPError, RuntimeError) as exc:
                    failure = self._transport_failure(exc, client, closes)
                if abort.wait(self._wait_or_give_up(failure, retries, started)):
                    raise ProviderUnavailableError(
                        f"{self.provider}: abandoned, another chunk of the call failed",
                        provider=self.provider,
                    )
                self._check_open(client, closes)
                retries += 1
        finally:
            self._slots.release()

    def _attempt_sync(
        self,
        client: httpx.Client,
        payload: dict[str, Any],
        deadline: float,
        abort: threading.Event,
    ) -> Any:
        request = client.build_request(
            "POST",
            self.url,
            json=payload,
            headers=self._headers(),
            timeout=self._request_timeout(deadline),
        )
        response = client.send(request, stream=True, follow_redirects=False)
        try:
            reader = _BodyReader(self, response)
            for chunk in response.iter_bytes():
                if abort.is_set():
                    raise ProviderUnavailableError(
                        f"{self.provider}: abandoned, another chunk of the call failed",
                        provider=self.provider,
                    )
                if time.monotonic() >= deadline:
                    raise _Failed(self._deadline_failure(deadline, "sending its answer"))
                if reader.add(chunk):
                    break
        finally:
            response.close()
        return self._answer(response, reader.content())

    def _remaining(self, deadline: float) -> float:
        return max(deadline - time.monotonic(), 0.0)

    def _request_timeout(self, deadline: float) -> float:
        """One request's timeout: ``timeout``, cut to what is left of the call's deadline."""
        return min(self.timeout, max(self._remaining(deadline), 0.001))

    def _deadline_failure(self, deadline: float, doing: str) -> FailedAttempt:
        return FailedAttempt(
            ProviderUnavailableError,
            f"{self.provider} at {self.url} ran out of the {self.retry.deadline:g}s deadline "
            f"{doing}",
            self.provider,
            transport="timeout",
        )

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

    def _answer(self, response: httpx.Response, content: bytes) -> Any:
        """The parsed JSON of a 2xx answer; raise ``_Failed`` describing any other answer."""
        status = response.status_code
        if 200 <= status < 300:
            try:
                return json.loads(content, parse_int=_parse_int)
            except (ValueError, UnicodeDecodeError, RecursionError):
                kind = self._safe(response.headers.get("content-type", "no content type"), 80)
                raise self._invalid(
                    f"HTTP {status} with a body that is not JSON ({kind}): "
                    f"{self._safe(_text(response, content))!r}",
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
                self._error_text(response, content),
                self.provider,
                status_code=status,
                request_id=self._request_id(response),
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        )

    def _error_text(self, response: httpx.Response, content: bytes) -> str:
        detail: Any = None
        text = _text(response, content)
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
        message = f"{self.provider} rerank failed with HTTP {response.status_code}: "
        message += self._safe(detail if isinstance(detail, str) else repr(detail))
        request_id = self._request_id(response)
        if request_id:
            message += f" (request id {request_id})"
        return message

    def _check_open(self, client: httpx.AsyncClient | httpx.Client, closes: int) -> None:
        """Raise a typed error when the reranker (or its client) was closed during the call."""
        if self._closes != closes:
            raise ProviderUnavailableError(
                f"{self.provider}: the reranker was closed during the call",
                provider=self.provider,
            )
        if client.is_closed:
            raise ProviderUnavailableError(
                f"{self.provider}: the HTTP client was closed during the call",
                provider=self.provider,
            )

    def _transport_failure(
        self, exc: Exception, client: httpx.AsyncClient | httpx.Client, closes: int
    ) -> FailedAttempt:
        self._check_open(client, closes)
        if isinstance(exc, RuntimeError):
            raise exc  # not a transport error, nor a closed client: a bug, shown as it is
        if isinstance(exc, httpx.DecodingError):
            raise self._invalid(
                f"the answer could not be decoded: {self._safe(str(exc))}"
            ) from None
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            raise ConfigurationError(
                f"{self.provider}: cannot post to {self.url}: {self._safe(str(exc))}"
            ) from None
        kind = type(exc).__name__
        message = (
            f"{self.provider} could not be reached at {self.url}: {kind}: {self._safe(str(exc))}"
        )
        transport: Literal["connect", "timeout"] = (
            "timeout" if isinstance(exc, httpx.TimeoutException) else "connect"
        )
        return FailedAttempt(ProviderUnavailableError, message, self.provider, transport=transport)

    # -- clients -----------------------------------------------------------------------------

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
        )

    def _new_async_client(self) -> httpx.AsyncClient:
        _check_proxy_env(type(self).__name__)
        try:
            return httpx.AsyncClient(
                limits=self._limits(), follow_redirects=False, verify=_ssl_context()
            )
        except (ImportError, ValueError) as exc:  # pragma: no cover - _check_proxy_env first
            raise ConfigurationError(
                f"{type(self).__name__}: the proxy settings in the environment cannot be used "
                f"({type(exc).__name__}); check {', '.join(_PROXY_VARS[:3])}"
            ) from None

    async def _aloop_state(self) -> _LoopState:
        """This loop's client, created on first use and closed when the loop shuts down."""
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            for old in [lp for lp in self._loops if lp.is_closed()]:
                del self._loops[old]  # closed without shutdown_asyncgens: let GC close it
            state = self._loops.get(loop)
        if state is not None:
            return state
        client = self._new_async_client()
        guard = _close_with_loop(self._loops, self._loops_lock, loop, client)
        await guard.__anext__()  # now tracked by the loop, finalised at its shutdown
        with self._loops_lock:
            if loop in self._loops:  # another task of this loop won the race
                other = self._loops[loop]
            else:
                self._loops[loop] = state = _LoopState(client, guard)
                return state
        await guard.aclose()
        return other

    def _pop_state(self, loop: asyncio.AbstractEventLoop | None) -> _LoopState | None:
        if loop is None:
            return None
        with self._loops_lock:
            return self._loops.pop(loop, None)

    def close(self) -> None:
        """Close the client of the sync path, if this reranker made it; made again on next use.

        A call running meanwhile ends with its answer or ``ProviderUnavailableError``.
        """
        self._closes += 1
        loop = _BackgroundLoop.current()
        state = self._pop_state(loop)
        if state is not None and loop is not None:
            future = asyncio.run_coroutine_threadsafe(state.guard.aclose(), loop)
            future.result(timeout=10)

    async def aclose(self) -> None:
        """Close the clients this reranker made: the sync path's and this event loop's."""
        self._closes += 1
        background = _BackgroundLoop.current()
        state = self._pop_state(background)
        if state is not None and background is not None:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(state.guard.aclose(), background)
            )
        state = self._pop_state(asyncio.get_running_loop())
        if state is not None:
            await state.guard.aclose()


_ssl_lock = threading.Lock()
_ssl: list[ssl.SSLContext] = []


def _ssl_context() -> ssl.SSLContext:
    """One verifying SSL context for every client made here.

    Building one reads the CA bundle (about 50 ms), which per ``asyncio.run`` would dominate.
    """
    with _ssl_lock:
        if not _ssl:
            _ssl.append(httpx.create_ssl_context())
        return _ssl[0]


class _BodyReader:
    """Collects a streamed, decoded body up to the reranker's limit (errors: the first 64 KiB)."""

    def __init__(self, owner: HTTPReranker, response: httpx.Response) -> None:
        self.owner = owner
        self.response = response
        self.is_error = not 200 <= response.status_code < 300
        self.limit = _ERROR_BODY_BYTES if self.is_error else owner.max_response_bytes
        self.parts: list[bytes] = []
        self.size = 0
        declared = response.headers.get("content-length", "")
        if not self.is_error and declared.isdigit() and int(declared) > self.limit:
            raise self._too_big(f"it declares {int(declared):,} bytes")

    def add(self, chunk: bytes) -> bool:
        """Keep ``chunk``; True when an error body has enough (stop reading)."""
        self.size += len(chunk)
        if self.size > self.limit:
            if self.is_error:
                self.parts.append(chunk[: len(chunk) - (self.size - self.limit)])
                return True
            raise self._too_big(f"more than {self.limit:,} bytes decoded")
        self.parts.append(chunk)
        return False

    def content(self) -> bytes:
        return b"".join(self.parts)

    def _too_big(self, why: str) -> InvalidResponseError:
        return self.owner._invalid(
            f"the answer is larger than max_response_bytes={self.owner.max_response_bytes:,} "
            f"({why})",
            self.response,
        )


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


def _call_usage(usages: Sequence[Usage]) -> Usage:
    """A call's ``Usage`` over its chunks' answers, one request each.

    A field is the sum over the chunks only when every chunk reported it; otherwise None, since
    a partial sum would pass for the whole call's count.
    """

    def total(values: list[int | None]) -> int | None:
        if any(v is None for v in values):
            return None
        return bounded_count(sum(v for v in values if v is not None))

    return Usage(
        tokens=total([u.tokens for u in usages]),
        search_units=total([u.search_units for u in usages]),
        rerank_units=total([u.rerank_units for u in usages]),
        requests=sum(u.requests for u in usages),
    )


def _parse_int(text: str) -> int | float:
    """A JSON integer; one past Python's digit limit is infinite rather than unparsable.

    So an absurd number in one field (a usage count) leaves the rest of the answer readable;
    validation then refuses it wherever it matters (a score, an index).
    """
    try:
        return int(text)
    except ValueError:
        return -math.inf if text.startswith("-") else math.inf


def _text(response: httpx.Response, content: bytes) -> str:
    try:
        return content.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return content.decode("utf-8", errors="replace")


def _clip(text: str, limit: int = _SERVER_TEXT_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_key(owner: str, value: str, source: str) -> str:
    """A usable key from ``source`` (``api_key`` or an environment variable), stripped.

    The message names where the key came from and what is wrong, never the key.
    """
    key = value.strip()
    problem = None
    if not key:
        problem = "is blank"
    elif any(not 0x21 <= ord(ch) <= 0x7E for ch in key):
        problem = (
            "contains whitespace, a control character or a non-ASCII character, which cannot "
            "go in an HTTP header (a key pasted with a line break?)"
        )
    elif len(key) < MIN_KEY_LENGTH:
        problem = f"is shorter than {MIN_KEY_LENGTH} characters, too short to be a real key"
    if problem is not None:
        raise ConfigurationError(f"{owner}: the API key from {source} {problem}")
    return key


def _check_headers(owner: str, headers: object) -> dict[str, str | Secret]:
    """Extra headers as sent; values of secret-looking names kept as ``Secret``."""
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise ConfigurationError(
            f"{owner}: headers must be a dict of str to str, got {type(headers).__name__}"
        )
    checked: dict[str, str | Secret] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise ConfigurationError(f"{owner}: {describe_value(name)} is not a header name")
        if not isinstance(value, str) or any(
            not (0x20 <= ord(ch) <= 0x7E or ch == "\t") for ch in value
        ):
            raise ConfigurationError(
                f"{owner}: the value of header {name!r} must be a str of printable ASCII "
                "without line breaks"
            )
        checked[name] = Secret(value) if _SECRET_HEADER.search(name) else value
    return checked


def _check_proxy_env(owner: str) -> None:
    """Refuse a proxy variable httpx cannot use, naming the variable and never its value."""
    for var in _PROXY_VARS:
        value = os.environ.get(var, "").strip()
        if not value:
            continue
        scheme = value.split("://", 1)[0].lower() if "://" in value else "http"
        if scheme not in _PROXY_SCHEMES:
            shown = repr(scheme) if re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) else "an unknown"
            raise ConfigurationError(
                f"{owner}: the environment variable {var} names a proxy with scheme {shown}; "
                f"httpx speaks {', '.join(_PROXY_SCHEMES)}. Fix or unset {var}."
            )
        if scheme.startswith("socks") and importlib.util.find_spec("socksio") is None:
            raise ConfigurationError(
                f"{owner}: the environment variable {var} names a SOCKS proxy, which needs "
                "the optional package 'socksio': pip install \"httpx[socks]\" (or unset it)"
            )


def _check_base_url(owner: str, url: object) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{owner}: base_url must be an http(s) URL, got {url!r}")
    url = url.strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:
        # Said before anything echoes the URL: it holds a password.
        raise ConfigurationError(
            f"{owner}: base_url must not carry credentials (user:password@host); pass the key "
            "as api_key=... or in headers={...}, which are never logged or shown"
        )
    if parts is not None and ("?" in url or "#" in url):
        # Not echoed either: a query may hold a token (``?api_key=...``).
        raise ConfigurationError(
            f"{owner}: base_url must be a server root without a query (?...) or fragment "
            "(#...); the provider appends its own path, and keys go in api_key=... or headers"
        )
    try:
        parsed = httpx.URL(url) if "://" in url else None
    except httpx.InvalidURL:
        parsed = None
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


#: Arguments of earlier releases, and where they went.
_RENAMED = {
    "model": "model_name=...",
    "max_retries": "retry=RetryPolicy(max_retries=...)",
    "deadline": "retry=RetryPolicy(deadline=...)",
}


def _unknown_options(owner: str, unknown: dict[str, Any]) -> str:
    """A message naming the options ``owner`` does not take (never their values)."""
    parts = []
    for name in sorted(unknown):
        hint = _RENAMED.get(name)
        parts.append(f"{name!r}" + (f" (use {hint})" if hint else ""))
    return f"{owner} got unknown option(s) {', '.join(parts)}"
