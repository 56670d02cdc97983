"""One HTTP layer for every API reranker: clients, timeouts, retries, chunking, validation.

Provider modules only say where to post (``path``), what to send (``_payload``), where the
results sit in the answer (``_results``) and what it reports it consumed (``_usage``).
Everything else is here, once:

* Every request runs on an ``httpx.AsyncClient``: one per event loop for ``arerank`` (closed
  when its loop shuts down), and one on a private background loop for ``rerank``, so both
  paths share one code path, one deadline and one fail-fast chunking. An injected
  ``httpx.Client`` is used on the sync path instead, its requests in worker threads so that
  the deadline ends the call whatever the client's reads do.
* A fork (multiprocessing, gunicorn) resets every reranker's slots and clients in the child.
* Retries as one ``RetryPolicy`` (``milvus_rerank.core.retry``) decides: by default with
  exponential backoff and jitter on connection errors, timeouts, 408, 409, 429 and 5xx,
  honouring ``Retry-After`` (seconds or HTTP date); never on other 4xx. The policy's
  ``deadline`` bounds a whole call, whatever the server does (slow headers, a trickled body).
* Document lists longer than the provider's per-request limit go out in chunks, at most
  ``max_concurrency`` requests in flight per reranker over all its threads and event loops,
  merged back by index; the first failing chunk ends the call at once.
* Every answer is read streamed, raw, and inflated here (gzip or deflate, one layer) with a
  bound, up to ``max_response_bytes`` plus what it may echo of the request; one holding far
  more JSON values than its documents need is refused before parsing, a large one parsed off
  the event loop. It is validated: each index in range, none duplicated, none missing, no
  object naming a key twice, every score a finite number. Anything else raises
  ``InvalidResponseError`` and no ranking is made.
* Usage: each answer's reported consumption (``_usage``) is summed over the call's chunks into
  ``RerankResponse.usage``. A usage field that is missing or malformed is None, never a
  guess, and never fails the ranking.
* Secrets: the key (and any secret-looking extra header) is checked at construction, sent
  only in its header, and scrubbed (any 8-character piece, in any spelling ``_Redactor``
  decodes) from every message built from server text, which is then clipped, and from
  httpx's and httpcore's log records; no error keeps a context holding the request or the raw
  answer. ``base_url`` may not carry credentials, a query or a fragment. A key read from the
  provider's environment variable goes to the provider's own API only.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import contextvars
import email.utils
import html
import importlib.util
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import socket
import ssl
import string
import threading
import time
import urllib.parse
import weakref
import zlib
from collections.abc import AsyncGenerator, Awaitable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import httpx

from milvus_rerank._version import __version__
from milvus_rerank.core.base import MilvusTarget, Reranker, describe_value
from milvus_rerank.core.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidResponseError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
)
from milvus_rerank.core.results import MAX_USAGE_COUNT, Usage, bounded_count
from milvus_rerank.core.retry import FailedAttempt, RetryPolicy

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

#: The largest answer read, after decompression, beyond what it may echo of the request
#: (a gzip bomb stops here). A 1,000-document answer without documents is about 50 KB.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 2**20
#: What an answer may hold per document beyond the request's own size (the result's index,
#: score and field names), so that answers echoing the documents (vLLM) always fit.
_PER_DOCUMENT_BYTES = 256
#: Error bodies are read only this far: enough to say what went wrong.
_ERROR_BODY_BYTES = 64 * 2**10
#: Answers larger than this have their JSON values counted before parsing ...
_SHAPE_CHECK_BYTES = 64 * 2**10
#: ... and are refused past this many per document, plus a margin (usage, metadata).
_VALUES_PER_DOCUMENT = 32
_VALUES_MARGIN = 1024
#: Answers larger than this are parsed in a worker thread, off the event loop.
_OFF_LOOP_BYTES = 256 * 2**10
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
        api_key: The key. Printable ASCII without whitespace, at least ``MIN_KEY_LENGTH``
            (8) characters; ``""`` is refused (None means none). Without it the key is read from
            the provider's environment variables, but only when calling the provider's own API
            over https (``default_base_url``'s host, or ``key_hosts``): a custom ``base_url``
            (a compatible or self-hosted server) gets a key only when passed here, so
            ``COHERE_API_KEY`` never goes to a third-party server. Rerankers with no public API
            (vLLM) read theirs for any ``base_url``: that variable names a self-hosted server.
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
        max_response_bytes: The largest answer accepted, decoded (4 MiB by default), beyond
            what it may echo of the request (its size, plus 256 bytes per document). Larger
            answers, and answers holding far more JSON values than their documents need, are
            refused before parsing.
        http_client: An ``httpx.Client`` for the sync path (not closed by ``close``). Its
            requests run in worker threads: the call ends at the deadline whatever the server
            does, and requests it abandons give their slots back at once and have their
            sockets shut (except a reused keep-alive connection still waiting for headers,
            whose worker ends at the client's read timeout).
        http_async_client: An ``httpx.AsyncClient`` to use (not closed by ``aclose``), on the
            event loop that first uses it only: on another one it is a ``ConfigurationError``
            (its pooled connections belong to that loop).
        headers: Extra request headers (values of auth-, key- or token-like names are kept
            and scrubbed as secrets). Merged case-insensitively over the reranker's own; one
            naming the key's header (``Authorization``) conflicts with ``api_key`` and is
            refused. ``Accept-Encoding`` is the reranker's own (gzip, deflate: decoded with a
            bound), and refused here.
    """

    #: Where the request goes, appended to ``base_url``.
    path: ClassVar[str] = "/rerank"
    #: The provider's public server root, or None when the user must name one.
    default_base_url: ClassVar[str | None] = None
    #: Environment variables holding the key, in order of preference; read only for the
    #: provider's own API (see ``api_key``), or for any server when there is no public API.
    env_vars: ClassVar[tuple[str, ...]] = ()
    #: Hosts of the provider's own API besides ``default_base_url``'s (regional endpoints),
    #: where the key from ``env_vars`` is sent too.
    key_hosts: ClassVar[tuple[str, ...]] = ()
    #: The header the key goes in, and how its value is written.
    auth_header: ClassVar[str] = "Authorization"
    auth_scheme: ClassVar[str] = "Bearer "
    default_model: ClassVar[str | None] = None
    #: Documents per request the provider accepts (None: no documented limit).
    default_max_batch: ClassVar[int | None] = None
    #: Where the results sit in the answer and how their fields are named.
    results_key: ClassVar[str | None] = "results"
    score_key: ClassVar[str] = "relevance_score"
    native_async = True  # its own _ascore: a declared capability (see Reranker)

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
        self._extra_headers = _check_headers(name, headers)
        self._unread_env_var: str | None = None  # a key variable left unsent (see api_key)
        self._api_key = self._resolve_key(api_key)
        self._redactor_cache: _Redactor | None = None
        _warn_plain_http(self)
        self._client = http_client
        self._injected_async_client = http_async_client
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._loops_lock = threading.Lock()
        # A reranker dropped without close(): its clients' idle sockets would live on in
        # their loops (the private one never ends), so closing them is scheduled there.
        self._finalizer = weakref.finalize(self, _close_states, self._loops, self._loops_lock)
        self._slots = _Slots(max_concurrency)
        self._injected_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._closes = 0  # bumped by close/aclose: a call that sees it change was closed on
        with _live_lock:
            _live.add(self)

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's clients, slots and loops (not its threads').

        A call in flight at the fork holds slots no thread of the child will give back, and its
        loops' clients share sockets with the parent: they are dropped unclosed (closing a TLS
        stream here would end the parent's session).
        """
        self._finalizer.detach()
        self._loops = {}
        self._loops_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_states, self._loops, self._loops_lock)
        self._slots = _Slots(self.max_concurrency)
        self._injected_loop = None

    # -- configuration -------------------------------------------------------------------

    def _own_api(self) -> bool:
        """Whether ``base_url`` is the provider's own public API, over https."""
        if self.default_base_url is None:
            return False
        url = httpx.URL(self.base_url)
        hosts = {httpx.URL(self.default_base_url).host, *self.key_hosts}
        return url.scheme == "https" and url.host in hosts and url.port in (None, 443)

    def _key_required(self) -> bool:
        """A key is required when talking to the provider's own public API."""
        return self._own_api()

    def _resolve_key(self, api_key: str | Secret | None) -> Secret | None:
        """The key to send: ``api_key``, else the environment's for the provider's own API."""
        owner = type(self).__name__
        if isinstance(api_key, Secret):
            api_key = api_key.get_secret_value()
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigurationError(
                f"{owner}: api_key must be a str, got {type(api_key).__name__}"
            )
        auth = self.auth_header.lower()
        in_headers = next((n for n in self._extra_headers if n.lower() == auth), None)
        if api_key is not None:
            if not api_key.strip():
                raise ConfigurationError(
                    f"{owner}: the API key from api_key is blank; pass api_key=None to send no key"
                )
            if in_headers is not None:
                raise ConfigurationError(
                    f"{owner}: headers set {in_headers!r}, the header api_key goes in; pass "
                    "the credentials one way only"
                )
            return Secret(_check_key(owner, api_key, "api_key"))
        if in_headers is not None:
            return None  # the caller's own header carries the credentials
        for var in self.env_vars:
            value = os.environ.get(var)
            if not value:
                continue
            if self.default_base_url is not None and not self._own_api():
                # A provider's key goes to the provider only, never to a compatible server
                # that some base_url names (and could log it), unless passed as api_key.
                self._unread_env_var = var
                logger.info(
                    "%s: %s is set but not sent to %s, which is not the provider's own API; "
                    "pass api_key=... to send a key there",
                    owner,
                    var,
                    self.base_url,
                )
                break
            return Secret(_check_key(owner, value, f"the environment variable {var}"))
        if self._key_required():
            names = " or ".join(self.env_vars)
            raise ConfigurationError(f"{owner} needs an API key: pass api_key=... or set {names}")
        return None

    @property
    def api_key(self) -> Secret | None:
        """The key as a ``Secret`` (never printed), or None."""
        return self._api_key

    def _provider_headers(self) -> dict[str, str]:
        """Headers the provider's API needs besides the key (e.g. an API version)."""
        return {}

    def _headers(self) -> dict[str, str]:
        """The request's headers: each name once, whatever its case."""
        merged: dict[str, tuple[str, str]] = {}
        defaults = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"milvus-rerank/{__version__}",
            **self._provider_headers(),
        }
        for name, value in defaults.items():
            merged[name.lower()] = (name, value)
        for name, extra in self._extra_headers.items():
            value = extra.get_secret_value() if isinstance(extra, Secret) else extra
            merged[name.lower()] = (name, value)
        # Only what the body reader decodes with a bound (httpx would add br and zstd).
        merged["accept-encoding"] = ("Accept-Encoding", "gzip, deflate")
        if self._api_key is not None:
            merged[self.auth_header.lower()] = (
                self.auth_header,
                self.auth_scheme + self._api_key.get_secret_value(),
            )
        return dict(merged.values())

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
        client: httpx.AsyncClient
        if self._injected_async_client is not None and not private:
            self._check_injected_loop()
            client = self._injected_async_client
        else:
            client = (await self._aloop_state()).client
        chunks = self._chunks(documents)
        scores = [math.nan] * len(documents)
        bodies = await _gather_or_cancel(
            [
                self._apost(client, self._payload(query, chunk), len(chunk), deadline, closes)
                for _, chunk in chunks
            ]
        )
        for (start, chunk), body in zip(chunks, bodies, strict=True):
            self._merge(scores, start, len(chunk), body)
        return scores, _call_usage([self._answer_usage(body) for body in bodies])

    def _check_injected_loop(self) -> None:
        """Refuse to use the injected ``httpx.AsyncClient`` on a second event loop.

        Its pooled connections belong to the loop that first used it; on another one (a second
        ``asyncio.run``) they fail with a raw ``RuntimeError`` now and then.
        """
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            first = self._injected_loop() if self._injected_loop is not None else None
            if first is None:  # never used, or that loop is gone with its connections
                self._injected_loop = weakref.ref(loop)
                return
        if first is not loop:
            raise ConfigurationError(
                f"{type(self).__name__}: the http_async_client passed in was first used on "
                "another event loop (an earlier asyncio.run?); an httpx.AsyncClient belongs to "
                "the loop that first used it. Make one per event loop, or pass none: the "
                "reranker then keeps one client per loop itself"
            )

    def _score_with_sync_client(
        self, client: httpx.Client, query: str, documents: list[str]
    ) -> tuple[list[float], Usage]:
        closes = self._closes
        deadline = time.monotonic() + self.retry.deadline
        chunks = self._chunks(documents)
        scores = [math.nan] * len(documents)
        call = _SyncCall(self._slots)
        # Every request runs in a worker, so the call ends at its deadline even when the
        # client's reads never time out (endless 100 Continue); no ``with``: leaving it would
        # wait for the requests abandoned when a chunk failed or the deadline passed.
        pool = ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(chunks)), thread_name_prefix="rerank"
        )
        try:
            futures = {
                pool.submit(
                    contextvars.copy_context().run,
                    self._post,
                    client,
                    self._payload(query, chunk),
                    len(chunk),
                    deadline,
                    closes,
                    call,
                ): (start, len(chunk))
                for start, chunk in chunks
            }
            done, pending = wait(
                futures, timeout=self._remaining(deadline), return_when=FIRST_EXCEPTION
            )
            for future in done:
                error = future.exception()
                if error is not None:
                    raise error
            if pending:
                raise self._deadline_failure(deadline, "answering").build()
            usages = []
            for future, (start, count) in futures.items():
                body = future.result()
                self._merge(scores, start, count, body)
                usages.append(self._answer_usage(body))
        finally:
            # Requests still running are abandoned: their slots come back now and their
            # sockets are shut, so their threads end at once rather than at a read timeout.
            call.abandon()
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

        shape_error = None
        try:
            items = self._results(body)
        except ValueError as exc:
            shape_error = f"unexpected answer shape: {exc}; got {self._describe(body)}"
        if shape_error is not None:  # raised here, so the error keeps no context
            raise invalid(shape_error)
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

    def _secret_values(self) -> list[str]:
        """The secrets this reranker sends: its key and secret-looking extra headers."""
        values = [self._api_key] if self._api_key is not None else []
        values += [v for v in self._extra_headers.values() if isinstance(v, Secret)]
        return [v.get_secret_value() for v in values]

    def _redactor(self) -> _Redactor:
        """What scrubs this reranker's secrets from server text, built once."""
        if self._redactor_cache is None:
            self._redactor_cache = _Redactor(self._secret_values())
        return self._redactor_cache

    def _scrub(self, text: str) -> str:
        """Server text with every piece of a secret removed, in whatever spelling it echoes."""
        return self._redactor().scrub(text)

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
    #
    # No error is raised inside an ``except`` block: it would keep the caught exception as its
    # ``__context__`` (an httpx error whose ``.request`` holds the key in its headers, a JSON
    # error whose ``.doc`` is the raw answer), reachable by any code walking the chain.

    async def _apost(
        self,
        client: httpx.AsyncClient,
        payload: dict[str, Any],
        count: int,
        deadline: float,
        closes: int,
    ) -> Any:
        started = deadline - self.retry.deadline
        acquired = True
        try:
            await asyncio.wait_for(self._slots.acquire_async(), self._remaining(deadline))
        except asyncio.TimeoutError:
            acquired = False
        if not acquired:
            raise self._deadline_failure(deadline, "waiting for a free request slot").build(
                f"max_concurrency={self.max_concurrency}"
            )
        try:
            retries = 0
            while True:
                outcome = await self._try_async(client, payload, count, deadline, closes)
                if not isinstance(outcome, FailedAttempt):
                    return outcome.body
                await asyncio.sleep(self._wait_or_give_up(outcome, retries, started))
                self._check_open(client, closes)
                retries += 1
        finally:
            self._slots.release()

    async def _try_async(
        self,
        client: httpx.AsyncClient,
        payload: dict[str, Any],
        count: int,
        deadline: float,
        closes: int,
    ) -> _Answer | FailedAttempt:
        """One attempt: its parsed answer, or what went wrong (raising only what is final)."""
        caught: Exception | None = None
        try:
            return _Answer(
                await asyncio.wait_for(
                    self._attempt(client, payload, count, deadline), self._remaining(deadline)
                )
            )
        except _Failed as failed:
            return failed.failure
        except asyncio.TimeoutError:
            return self._deadline_failure(deadline, "answering")
        except (httpx.HTTPError, RuntimeError) as exc:
            caught = exc
        outcome = self._transport_failure(caught, client, closes)
        del caught
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _attempt(
        self, client: httpx.AsyncClient, payload: dict[str, Any], count: int, deadline: float
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
            reader = _BodyReader(self, response, request, count)
            if response.is_stream_consumed:  # in memory already (a mock transport), decoded
                reader.add(response.content)
            else:
                async for raw in response.aiter_raw():
                    if reader.feed(raw):
                        break
        finally:
            await response.aclose()
        content = reader.content()
        if len(content) > _OFF_LOOP_BYTES:
            # Parsed in a worker: the loop (shared by every sync call) keeps its timers going.
            return await asyncio.to_thread(self._answer, response, content, count)
        return self._answer(response, content, count)

    def _post(
        self,
        client: httpx.Client,
        payload: dict[str, Any],
        count: int,
        deadline: float,
        closes: int,
        call: _SyncCall,
    ) -> Any:
        """The sync path over an injected ``httpx.Client``: the deadline checked per read."""
        started = deadline - self.retry.deadline
        if not call.acquire(self._remaining(deadline)):
            if call.abort.is_set():
                raise self._abandoned()
            raise self._deadline_failure(deadline, "waiting for a free request slot").build(
                f"max_concurrency={self.max_concurrency}"
            )
        try:
            retries = 0
            while True:
                outcome = self._try_sync(client, payload, count, deadline, closes, call)
                if not isinstance(outcome, FailedAttempt):
                    return outcome.body
                if call.abort.wait(self._wait_or_give_up(outcome, retries, started)):
                    raise self._abandoned()
                self._check_open(client, closes)
                retries += 1
        finally:
            call.release()

    def _try_sync(
        self,
        client: httpx.Client,
        payload: dict[str, Any],
        count: int,
        deadline: float,
        closes: int,
        call: _SyncCall,
    ) -> _Answer | FailedAttempt:
        caught: Exception | None = None
        try:
            return _Answer(self._attempt_sync(client, payload, count, deadline, call))
        except _Failed as failed:
            return failed.failure
        except (httpx.HTTPError, RuntimeError) as exc:
            caught = exc
        if call.abort.is_set():  # its socket was shut by the call that abandoned it
            raise self._abandoned()
        outcome = self._transport_failure(caught, client, closes)
        del caught
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _attempt_sync(
        self,
        client: httpx.Client,
        payload: dict[str, Any],
        count: int,
        deadline: float,
        call: _SyncCall,
    ) -> Any:
        token, trace = call.track()
        request = client.build_request(
            "POST",
            self.url,
            json=payload,
            headers=self._headers(),
            timeout=self._request_timeout(deadline),
            extensions={"trace": trace},
        )
        try:
            response = client.send(request, stream=True, follow_redirects=False)
            call.register(token, response.extensions.get("network_stream"))
            try:
                reader = _BodyReader(self, response, request, count)
                if response.is_stream_consumed:  # in memory already (a mock transport), decoded
                    reader.add(response.content)
                for raw in () if response.is_stream_consumed else response.iter_raw():
                    if call.abort.is_set():
                        raise self._abandoned()
                    if time.monotonic() >= deadline:
                        raise _Failed(self._deadline_failure(deadline, "sending its answer"))
                    if reader.feed(raw):
                        break
            finally:
                call.forget(token)  # before the connection goes back to the client's pool
                response.close()
        finally:
            call.forget(token)
        return self._answer(response, reader.content(), count)

    def _abandoned(self) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            f"{self.provider}: abandoned, another chunk of the call failed or its deadline passed",
            provider=self.provider,
        )

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

    def _answer(self, response: httpx.Response, content: bytes, count: int) -> Any:
        """The parsed JSON of a 2xx answer; raise ``_Failed`` describing any other answer."""
        status = response.status_code
        if 200 <= status < 300:
            self._check_size(response, content, count)
            problem = None
            try:
                return json.loads(content, parse_int=_parse_int, object_pairs_hook=_unique_keys)
            except _DuplicateKey as exc:
                problem = f"a JSON object names {self._describe(exc.key)} twice"
            except (ValueError, UnicodeDecodeError, RecursionError):
                kind = self._safe(response.headers.get("content-type", "no content type"), 80)
                problem = (
                    f"HTTP {status} with a body that is not JSON ({kind}): "
                    f"{self._safe(_text(response, content[:_SCRUB_LIMIT]))!r}"
                )
            raise self._invalid(problem, response)
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

    def _check_size(self, response: httpx.Response, content: bytes, count: int) -> None:
        """Refuse, before parsing, an answer holding far more JSON values than ``count`` need.

        Parsing costs memory per value, not per byte: 32 MiB of ``[],`` parse into 880 MiB of
        lists. A real answer holds a few values per document (index, score, maybe the echoed
        document), so past ``_VALUES_PER_DOCUMENT`` per document (plus a margin for
        metadata) the answer is refused. Counted cheaply on the bytes; string contents (an
        echoed document full of commas) are left out only when the cheap count is too high.
        """
        if len(content) <= _SHAPE_CHECK_BYTES:
            return
        budget = _VALUES_MARGIN + _VALUES_PER_DOCUMENT * count
        if _structure_count(content) <= budget:
            return
        values = _structure_count(_JSON_STRING.sub(b'""', content))
        if values > budget:
            raise self._invalid(
                f"it holds about {values:,} JSON values for {count} documents (at most "
                f"{budget:,} are parsed)",
                response,
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
        if response.status_code in (401, 403) and self._unread_env_var is not None:
            message += (
                f" (no key was sent: {self._unread_env_var} is sent only to the provider's own "
                f"API; pass api_key=... for {self.base_url})"
            )
        # Each part was scrubbed; a key split between them (detail, request id) is not.
        return self._redactor().redact(message)

    def _check_open(self, client: httpx.AsyncClient | httpx.Client, closes: int) -> None:
        """Raise a typed error when the reranker (or its client) was closed during the call."""
        error = self._closed_error(client, closes)
        if error is not None:
            raise error

    def _closed_error(
        self, client: httpx.AsyncClient | httpx.Client, closes: int
    ) -> ProviderUnavailableError | None:
        if self._closes != closes:
            return ProviderUnavailableError(
                f"{self.provider}: the reranker was closed during the call",
                provider=self.provider,
            )
        if client.is_closed:
            return ProviderUnavailableError(
                f"{self.provider}: the HTTP client was closed during the call",
                provider=self.provider,
            )
        return None

    def _transport_failure(
        self, exc: Exception, client: httpx.AsyncClient | httpx.Client, closes: int
    ) -> FailedAttempt | Exception:
        """What a transport exception means: a failure to judge, or an error to raise as is.

        Returned, not raised, so the caller raises it outside its ``except`` block.
        """
        closed = self._closed_error(client, closes)
        if closed is not None:
            return closed
        if isinstance(exc, RuntimeError):
            return exc  # not a transport error, nor a closed client: a bug, shown as it is
        if isinstance(exc, httpx.DecodingError):
            return self._invalid(f"the answer could not be decoded: {self._safe(str(exc))}")
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return ConfigurationError(
                f"{self.provider}: cannot post to {self.url}: {self._safe(str(exc))}"
            )
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

#: Every HTTP reranker alive in this process: for the fork handler and the log filter.
_live: weakref.WeakSet[HTTPReranker] = weakref.WeakSet()
_live_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """Reset what a fork copied mid-use: locks possibly held, slots of calls in flight."""
    global _live_lock, _ssl_lock
    _live_lock = threading.Lock()
    _ssl_lock = threading.Lock()
    _BackgroundLoop._lock = threading.Lock()  # its loop is re-made: the pid changed
    for reranker in list(_live):
        reranker._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _SecretLogFilter(logging.Filter):
    """Scrubs live rerankers' secrets from httpx's and httpcore's log records.

    httpcore logs every response's headers at DEBUG; a server echoing the key in one
    (``Location: ...?k=<key>``, ``Set-Cookie``) would put it in the log. A record that holds
    a piece of a secret (in any spelling ``_Redactor`` knows) is rewritten, others untouched.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple[frozenset[str], _Redactor] = (frozenset(), _Redactor([]))

    def filter(self, record: logging.LogRecord) -> bool:
        with _live_lock:
            rerankers = list(_live)
        secrets = frozenset(s for r in rerankers for s in r._secret_values())
        if not secrets:
            return True
        if self._cache[0] != secrets:
            self._cache = (secrets, _Redactor(list(secrets)))
        redactor = self._cache[1]
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the logging module's to report
            return True
        text = _normalise(message)
        scrubbed = redactor.redact(text)
        if scrubbed != text:
            record.msg, record.args = scrubbed, None
        return True


def _ssl_context() -> ssl.SSLContext:
    """One verifying SSL context for every client made here.

    Building one reads the CA bundle (about 50 ms), which per ``asyncio.run`` would dominate.
    """
    with _ssl_lock:
        if not _ssl:
            _ssl.append(httpx.create_ssl_context())
        return _ssl[0]


class _BodyReader:
    """Collects a streamed body, decoded with a bound, up to the limit (errors: 64 KiB).

    Raw bytes are read off the wire and inflated here, never more than the room left: httpx's
    own decoders inflate a whole network read at once (and zstd, or ``gzip, gzip``, without
    any bound), so a few KB on the wire became GiBs before any size check ran. One
    ``gzip``/``deflate`` layer is decoded; ``br``/``zstd`` (never asked for) and stacked
    layers are refused; other codings are ignored, as httpx ignores them.

    The limit for a 2xx answer is ``max_response_bytes`` plus what the answer may echo: the
    request's own size and ``_PER_DOCUMENT_BYTES`` per document.
    """

    def __init__(
        self, owner: HTTPReranker, response: httpx.Response, request: httpx.Request, count: int
    ) -> None:
        self.owner = owner
        self.response = response
        self.is_error = not 200 <= response.status_code < 300
        sent = request.headers.get("content-length", "")
        echo = (int(sent) if sent.isdigit() else 0) + _PER_DOCUMENT_BYTES * count
        self.limit = _ERROR_BODY_BYTES if self.is_error else owner.max_response_bytes + echo
        self.parts: list[bytes] = []
        self.size = 0
        self.raw_size = 0
        declared = response.headers.get("content-length", "")
        if not self.is_error and declared.isdigit() and int(declared) > self.limit:
            raise self._too_big(f"it declares {int(declared):,} bytes")
        self.coding = self._coding(response.headers.get("content-encoding", ""))
        self.inflater: Any = None
        if self.coding is not None:
            wbits = zlib.MAX_WBITS | 16 if self.coding == "gzip" else zlib.MAX_WBITS
            self.inflater = zlib.decompressobj(wbits)
        self.first = True

    def _coding(self, header: str) -> Literal["gzip", "deflate"] | None:
        codings = [c.strip().lower() for c in header.split(",")]
        known = [c for c in codings if c in _DECODED or c in _REFUSED]
        if len(known) > 1:
            raise self.owner._invalid(
                f"its Content-Encoding {self.owner._safe(header, 60)!r} stacks {len(known)} "
                "layers; one gzip or deflate layer is decoded",
                self.response,
            )
        if not known:
            return None
        if known[0] in _REFUSED:
            raise self.owner._invalid(
                f"its Content-Encoding {known[0]!r} was not asked for (Accept-Encoding: gzip, "
                "deflate)",
                self.response,
            )
        return _DECODED[known[0]]

    def feed(self, raw: bytes) -> bool:
        """Take bytes off the wire; True when nothing more is needed (stop reading)."""
        self.raw_size += len(raw)
        if self.inflater is None:
            return self.add(raw)
        if not self.is_error and self.raw_size > self.limit + _ERROR_BODY_BYTES:
            raise self._too_big(f"more than {self.raw_size:,} bytes on the wire")
        data = raw
        while data and not self.inflater.eof:
            room = self.limit - self.size
            failure = None
            try:
                out = self.inflater.decompress(data, room + 1)
            except zlib.error as exc:
                out, failure = b"", str(exc)
            if failure is not None:
                if self.first and self.coding == "deflate":  # raw deflate, without zlib's header
                    self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                    self.first = False
                    continue
                raise self.owner._invalid(
                    f"the answer could not be decoded ({self.coding}): {self.owner._safe(failure)}",
                    self.response,
                )
            self.first = False
            if out and self.add(out):
                return True
            data = self.inflater.unconsumed_tail
        # Past the stream's end nothing more is read: what follows is ignored, as by httpx,
        # and a server trickling it would otherwise hold the call until its deadline.
        return bool(self.inflater.eof)

    def add(self, chunk: bytes) -> bool:
        """Keep decoded ``chunk``; True when an error body has enough (stop reading)."""
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
            f"plus what it may echo of the request ({why})",
            self.response,
        )


_DECODED: dict[str, Literal["gzip", "deflate"]] = {
    "gzip": "gzip",
    "x-gzip": "gzip",
    "deflate": "deflate",
}
_REFUSED = frozenset({"br", "zstd", "compress", "x-compress"})


@dataclass(frozen=True, slots=True)
class _Answer:
    """A parsed 2xx answer (which may be any JSON value, null included)."""

    body: Any


class _SyncCall:
    """One sync call over an injected ``httpx.Client``: its requests' slots and sockets.

    When the call ends early (a chunk failed, the deadline passed), ``abandon`` gives back the
    slots its unfinished requests hold and shuts their sockets, which wakes the worker threads
    blocked in a read. A socket is known from the connection made for the request (httpcore's
    ``trace``) or from the answer once its headers came; a reused connection still waiting
    for headers is not, and its thread ends at the client's read timeout.
    """

    def __init__(self, slots: _Slots) -> None:
        self.slots = slots
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self.held = 0
        self.streams: dict[int, list[Any]] = {}

    def acquire(self, timeout: float) -> bool:
        """Take a slot for one request; False on timeout or when the call was abandoned."""
        if not self.slots.acquire(timeout):
            return False
        with self.lock:
            if not self.abort.is_set():
                self.held += 1
                return True
        self.slots.release()
        return False

    def release(self) -> None:
        """Give one request's slot back, unless ``abandon`` already did."""
        with self.lock:
            if self.held == 0:
                return
            self.held -= 1
        self.slots.release()

    def track(self) -> tuple[int, Any]:
        """A token for one attempt, and the ``trace`` extension that records its socket."""
        token = next(_tokens)

        def trace(event: str, info: dict[str, Any]) -> None:
            if event.endswith(("connect_tcp.complete", "start_tls.complete")):
                self.register(token, info.get("return_value"))

        return token, trace

    def register(self, token: int, stream: Any) -> None:
        if stream is None:
            return
        with self.lock:
            if not self.abort.is_set():
                self.streams.setdefault(token, []).append(stream)
                return
        _shut(stream)

    def forget(self, token: int) -> None:
        with self.lock:
            self.streams.pop(token, None)

    def abandon(self) -> None:
        with self.lock:
            self.abort.set()
            held, self.held = self.held, 0
            streams = [s for group in self.streams.values() for s in group]
            self.streams.clear()
        for _ in range(held):
            self.slots.release()
        for stream in streams:
            _shut(stream)


_tokens = itertools.count()


def _shut(stream: Any) -> None:
    """Shut a network stream's socket (a blocked ``recv`` in another thread returns)."""
    try:
        sock = stream.get_extra_info("socket")
    except Exception:  # noqa: BLE001 - a transport of unknown make: nothing to shut
        return
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, TLS or not


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__("duplicate key")
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it names a key twice.

    ``json`` keeps the last value silently, where another parser (a validating proxy) keeps
    the first: the answer would not mean one thing.
    """
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


#: A JSON string, escapes included (unrolled: no backtracking per character).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _structure_count(content: bytes) -> int:
    """An upper bound on the JSON values in ``content``: each follows ``[``, ``,`` or ``:``."""
    return content.count(b"[") + content.count(b",") + content.count(b":") + 1


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


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
#: Backslash escapes a server's JSON, repr or PHP encoder writes: ``\\uXXXX``, ``\\xXX``, ``\\/``.
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|\\([^0-9A-Za-z\s])")
#: Server text longer than this is cut before it is scrubbed (it is shown clipped anyway).
_SCRUB_LIMIT = _ERROR_BODY_BYTES


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1) or match.group(2)
    if code is None:
        return match.group(3)
    char = chr(int(code, 16))
    return "\ufffd" if 0xD800 <= ord(char) <= 0xDFFF else char  # no lone surrogates


def _normalise(text: str) -> str:
    r"""Server text with its escapes decoded: backslash, percent (any case) and HTML escapes.

    A server echoing a key may spell it ``sk-ab\/cd``, ``sk-ab%2fcd`` or ``&#115;k-ab``;
    scrubbing works on what such text means. Repeated (at most 3 times) for double encoding.
    """
    for _ in range(3):
        decoded = html.unescape(urllib.parse.unquote(_ESCAPE.sub(_unescape, text)))
        if decoded == text:
            break
        text = decoded
    return text


class _Redactor:
    """Removes every run of ``MIN_KEY_LENGTH`` or more characters of a secret from text.

    Not only the whole key: a server may echo a prefix, cut it at a length limit, or split it
    between its message and a request id. A secret is matched case-insensitively, as sent and
    as base64 (at every alignment, so inside ``Basic base64(user:key)`` too) or hex, in text
    whose escapes are decoded first. Matching is one pass over the text against the set of
    the secrets' 8-character windows. A text that ends with a secret's first characters (or
    starts with its last), at least 4 of them, loses them too: a cut left them there.
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        forms: set[str] = set()
        self.edges: list[str] = []
        for raw in secrets:
            if len(raw) < MIN_KEY_LENGTH:
                continue
            forms.add(raw)
            self.edges.append(raw.translate(_ASCII_LOWER))
            data = raw.encode()
            forms.add(data.hex())
            for pad in range(3):  # the key's base64 inside a longer encoded text
                for encode in (base64.b64encode, base64.urlsafe_b64encode):
                    encoded = encode(b"\0" * pad + data).decode()
                    forms.add(encoded[-(-8 * pad // 6) : 8 * (pad + len(data)) // 6])
        width = MIN_KEY_LENGTH
        self.windows = frozenset(
            form.translate(_ASCII_LOWER)[i : i + width]
            for form in forms
            for i in range(len(form) - width + 1)
        )

    def scrub(self, text: str) -> str:
        if not self.windows:
            return text
        text = _normalise(text[:_SCRUB_LIMIT])
        return self.redact(text)

    def redact(self, text: str) -> str:
        """``text`` with every secret window (and cut edge) replaced, without decoding it."""
        if not self.windows:
            return text
        low = text.translate(_ASCII_LOWER)
        width = MIN_KEY_LENGTH
        windows = self.windows
        spans: list[list[int]] = []
        for i in range(len(low) - width + 1):
            if low[i : i + width] in windows:
                if spans and i <= spans[-1][1]:
                    spans[-1][1] = i + width
                else:
                    spans.append([i, i + width])
        for secret in self.edges:
            for size in range(min(len(secret), width) - 1, 3, -1):
                if low.endswith(secret[:size]):
                    spans.append([len(low) - size, len(low)])
                    break
            for size in range(min(len(secret), width) - 1, 3, -1):
                if low.startswith(secret[-size:]):
                    spans.insert(0, [0, size])
                    break
        if not spans:
            return text
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out, at = [], 0
        for start, end in merged:
            out += [text[at:start], _REDACTED]
            at = end
        out.append(text[at:])
        return "".join(out)


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
        if name.lower() == "accept-encoding":
            raise ConfigurationError(
                f"{owner}: headers may not set {name!r}: the reranker asks for gzip or deflate "
                "only, which it decodes with a bound on the decoded size"
            )
        if name.lower() in {n.lower() for n in checked}:
            raise ConfigurationError(f"{owner}: headers name {name!r} twice (in another case)")
        checked[name] = Secret(value) if _SECRET_HEADER.search(name) else value
    return checked


def _check_header_value(owner: str, option: str, value: object) -> str:
    """``value`` if it can go in a header as given: printable ASCII, no line break."""
    if (
        not isinstance(value, str)
        or not value.strip()
        or any(not (0x20 <= ord(ch) <= 0x7E or ch == "\t") for ch in value)
    ):
        raise ConfigurationError(
            f"{owner}: {option} must be a non-empty str of printable ASCII without line "
            f"breaks (it goes in a header), got {describe_value(value)}"
        )
    return value


_warned_plain_http: set[str] = set()


def _warn_plain_http(reranker: HTTPReranker) -> None:
    """Warn once per host when a key would cross the network in clear text."""
    secret = reranker.api_key is not None or any(
        isinstance(v, Secret) for v in reranker._extra_headers.values()
    )
    url = httpx.URL(reranker.base_url)
    if not secret or url.scheme != "http" or _is_loopback(url.host):
        return
    if url.host in _warned_plain_http:
        return
    _warned_plain_http.add(url.host)
    logger.warning(
        "%s sends its API key to %s over plain http, readable by anyone on the path; use "
        "https unless this network is trusted",
        type(reranker).__name__,
        url.host,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        # Else every call fails deep in the socket layer with a raw OverflowError.
        raise ConfigurationError(
            f"{owner}: base_url's port must be from 1 to 65535, got {parsed.port} in {url!r}"
        )
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


_log_filter = _SecretLogFilter()
for _name in (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
):
    logging.getLogger(_name).addFilter(_log_filter)
