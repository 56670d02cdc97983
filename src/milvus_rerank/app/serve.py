"""``milvus-rerank serve``: any local reranker over the Cohere v2, vLLM/Jina and TEI wire formats.

Routes (all ``POST``, JSON):

* ``/v2/rerank`` — Cohere v2 (``{"query", "documents", "top_n"?}`` → ``{"id", "results", "meta"}``);
  Milvus Lite's ``cohere`` provider posts here through ``base_url=http://host:port/v2``.
* ``/v1/rerank`` — vLLM / Jina (``results`` with ``document.text``, ``usage``).
* ``/rerank`` — a body with ``texts`` gets TEI's bare array; a body with ``documents`` gets
  vLLM's answer. Milvus 2.6's ``tei`` and ``vllm`` providers both post to ``{endpoint}/rerank``.
* ``GET /health`` — ``{"status": "ok", "model": <served name>}`` (never needs the API key);
  503 ``{"status": "stalled", ...}`` while requests wait on a scoring path that has made no
  progress for ``stall_after`` seconds (60): a stuck worker, which no request would report.

The served model name (``model_name`` / ``--served-model-name``; vLLM's answers and ``/health``
carry it) defaults to the reranker's ``model_name``, cut to its last component when that is a
local path, so an unauthenticated client never learns the server's file layout.

Errors come in each route's own shape: Cohere ``{"id", "message"}``, vLLM ``{"error":
{"message", "type", "param", "code"}}``, TEI ``{"error", "error_type"}``. On ``/rerank``, errors
found before the body is parsed (size, time, JSON) use vLLM's shape, since the format is not
known yet. A value from the request is echoed clipped (its type and at most 60 characters),
and no message is longer than 1,000 characters.

Limits (``create_app`` keyword / ``serve`` flag, default):

* ``max_body_bytes`` / ``--max-body-bytes`` (2,000,000, TEI's ``--payload-limit``): a larger body
  is answered 413, from its ``Content-Length`` or as soon as the streamed bytes pass it.
* ``body_timeout`` / ``--body-timeout`` (30 s): a body still arriving after that is answered 408.
* ``max_documents`` / ``--max-documents`` (1,000, TEI's ``--max-client-batch-size``; Milvus's own
  batches fit): more documents in one request are answered 422. A body holding more than
  4 JSON arrays and objects a document (plus 256) is answered 400 before it is parsed: parsing
  2 MB of ``[[],[],...]`` would hold the event loop for seconds.
* ``max_document_chars`` / ``--max-document-chars`` (None: 32 characters per token of the model
  window, e.g. 16,384 for a 512-token model; 262,144 where the window is unknown; times the
  windows the reranker reads of a document, ``passages_per_document()``: ``max_passages`` for
  a local reranker with ``long_documents="max_passage"``, or a fallback or cache over one):
  the query and each document are cut to this many characters before tokenization, so a
  50 MB document is never tokenized whole. A text that fits is far shorter, and scores the same;
  only a text far sparser than 32 characters a token (thousands of padding spaces) can lose
  words past the cap that the library, which cuts by tokens, would read.
* ``max_batch_pairs`` (256) and ``max_batch_tokens`` / ``--max-batch-tokens`` (8,192 tokens): one
  model call holds at most this much. A local reranker's pairs count the tokens they encode to
  (each request is tokenized first, in a worker thread); a pair for a reranker with its own
  ``score_pairs`` counts an estimate, ``ceil(characters / 4) + 3`` tokens, at most the window
  (a reranker answering through ``rerank_response``, e.g. an API, gets each request whole,
  see below). A large request is cut into such micro-batches, served round-robin with the
  other requests waiting, so a small request is never stuck behind a large one.
* ``max_pending_pairs`` / ``--max-pending-pairs`` (16,384) and ``max_concurrent_requests`` /
  ``--max-concurrent-requests`` (512, TEI's ``--max-concurrent-requests``): past either, a
  request is answered 429 with ``Retry-After: 1``. A request counts against the latter once
  its body is in: a client still uploading holds a connection, never a scoring slot.
* ``max_wait_ms`` / ``--max-wait-ms`` (2 ms, 0 to 1,000): see batching below.
* ``batch_workers`` (None: a local reranker's own ``batch_workers``, 2 on CPUs and 1 on GPUs;
  8 requests for a reranker answering through ``rerank_response``, e.g. an API; 1 for another
  reranker with its own ``score_pairs``): micro-batches (or whole requests) scored at once.
* A client that disconnects has its pending work dropped, quietly (no traceback per abort).
* JSON nested too deeply for the parser is a 400, never a 500.

Connections (``run_server`` and ``BackgroundServer`` keywords / ``serve`` flags, default), kept
by uvicorn's h11 protocol with three guards added, since uvicorn has no header timeout:

* ``header_timeout`` / ``--header-timeout`` (10 s): a connection must complete its request
  headers within this long of opening, or of its previous answer, else it is closed (slow
  headers, "slowloris"). Idle keep-alive connections close after uvicorn's 5 s as before;
  headers are at most 16 KiB (h11's limit; larger: 400).
* ``max_connections`` / ``--max-connections`` (1,000, and at most the open-file limit less
  the accept backlog and 64 spare descriptors): a new connection past it closes the
  connection that has waited longest for its headers (idle or slow), or, when every
  connection is inside a request, is answered 503 with ``Retry-After: 1``. The accept backlog
  is a quarter of the open-file limit, at most 2,048, so one burst of accepts cannot run the
  process out of descriptors.
* A body may come in at most 1,024 pieces (chunks, or reads of a ``Content-Length`` body),
  plus one per 256 bytes: a body of 1-byte chunks is answered 400 after about a thousand,
  instead of costing the event loop several microseconds of parsing per byte.

Beyond these, a public server belongs behind a reverse proxy (TLS, per-client rate limits).

Request options: Cohere's ``return_documents`` is honoured, and its ``max_tokens_per_doc`` and
vLLM's ``truncate_prompt_tokens`` are accepted when they are at least the model window (the
server always truncates pairs to the window; -1 is vLLM's "the window"); smaller values are
answered 400 (unsupported). TEI's ``raw_scores=true`` is answered 422 (the reranker's public
interface gives activated scores only; ``null`` is the default, false), ``truncation_direction=
"Left"`` 422, and ``truncate=false`` answers 413 for a text longer than ``max_document_chars``
(TEI's answer to an input past the window; shorter ones are truncated to the window: the
server checks characters, not tokens, before scoring).

Usage: each answer reports what scoring that request consumed, as counted, never guessed. For
a local reranker it is the tokens its model read for the request's own rows (every window of a
``max_passage`` document, padding not counted), what ``rerank_response(...).usage.tokens``
gives for the same call; for any other reranker, what its ``rerank_response`` reported (a
fallback's answering member, a cache's newly scored documents, an upstream API's own figure).
Each route puts it where its format does: vLLM/Jina ``usage.total_tokens`` (``null`` where
nothing was counted; ``documents`` and ``characters`` scored beside it); Cohere v2
``meta.tokens.input_tokens``, and ``meta.billed_units.search_units`` only when an upstream
billed them (this server bills no search units, so none are made up); TEI, whose body is a
bare array, the ``x-compute-tokens`` header as TEI sends it. A reranker with a ``score_pairs``
of its own (a batched pass that counts nothing) is served through it and reports nothing.

Instructions: a body's ``instruction`` (any route; vLLM's Qwen3 template reads that name)
scores the request with ``reranker.with_instruction(instruction)`` where the reranker has
instructions (the LLM rerankers); ``null`` or no field keeps the served reranker's own. A
non-string, one with a lone surrogate or one over ``MAX_INSTRUCTION_CHARS`` characters is
answered 400 (TEI: 422); a reranker without instructions answers 422, never ignores it. The
views of the last ``MAX_INSTRUCTION_VIEWS`` instructions are kept (they share the loaded model).

Send raw text: the server writes each reranker's prompt itself (the Qwen3-Reranker chat frame,
FlagEmbedding's ``A:``/``B:`` lines...). A client that pre-templates its text the way vLLM's
Qwen3 recipe does (``VLLMReranker`` with ``Qwen3Reranker.vllm_templates()``) gets a prompt
inside a prompt: those templates are for a vLLM server, not for this one.

Authentication: with ``api_key`` (``--api-key``, or ``MILVUS_RERANK_API_KEY``; stripped of
surrounding whitespace, and refused at start unless it is at least 8 printable ASCII
characters) every rerank route needs ``Authorization: Bearer <key>`` (the scheme in any case;
the key compared in constant time and never logged), else 401. ``run_server`` refuses to bind
a non-loopback host without a key unless ``insecure_no_auth=True`` (``--insecure-no-auth``).
Without a key, a web page the user visits could post to the server (no preflight for a
``text/plain`` body) or, by DNS rebinding, read its answers; so a keyless server answers 415
to a body that is not ``Content-Type: application/json`` and 421 to a ``Host`` that is not
``localhost``, an IP address or one of ``allowed_hosts`` (``--allowed-hosts``, comma-separated;
``*`` allows any; given, it applies with a key too). A keyless server on a non-loopback host
(``--insecure-no-auth``: reachable by anyone already) checks no ``Host`` unless given a list.

Scoring failures: a reranker's error is answered in the route's shape and logged as one line
(no traceback): an upstream API's rate limit is 429 (with its ``Retry-After`` when it gave
one), its refusal of this server's key or a malformed answer 502, its unavailability 503,
invalid input 400 (TEI: 422; also an upstream's own 400, 413 or 422, which refuse the
request's content, e.g. a pair past its window), anything else 500 (its traceback logged at
DEBUG only). Clients see the kind of failure, never the upstream's own text, and the log line
names the upstream and its HTTP status, not its text (which may echo the upstream key).

Concurrent requests go through the library's micro-batcher (``providers/_batching.py``, the
one every local reranker uses across its callers). A local reranker's rows (and an
instruction view's, encoded with the view's prompt) share its model's forward passes: the
requests waiting are scored together, and while requests do come together it waits up to
``max_wait_ms`` to gather them (a lone request never waits); so does a reranker with a
``score_pairs`` of its own (one call per micro-batch). Any other reranker (an API, a
``FallbackReranker``, a ``CachedReranker``) answers each request whole, with one
``rerank_response`` call: never cut into micro-batches (a fallback ranks a request with one
member's scores), never batched with another request (a request's failure is its own; its
usage is its own), and up to ``batch_workers`` requests at once (8 by default: a slow
upstream holds only its own requests). The worker threads serve every event loop running the
app. ``run_server`` freezes the objects alive after loading the model
(``gc.freeze``), so garbage collections during requests do not walk the model's.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import ipaddress
import json
import logging
import math
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from milvus_rerank.core.base import Reranker, describe_value, rank, validate_request
from milvus_rerank.core.errors import (
    AllRerankersFailedError,
    AuthenticationError,
    ConfigurationError,
    InvalidInputError,
    InvalidResponseError,
    MissingDependencyError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    RerankError,
)
from milvus_rerank.core.results import RerankResult, Usage
from milvus_rerank.providers.api.secrets import check_key as _check_key
from milvus_rerank.providers.local.batching import Overloaded
from milvus_rerank.providers.local.batching import RequestBatcher as Batcher
from milvus_rerank.providers.local.runner import LocalReranker
from milvus_rerank.wrappers.fallback import FallbackReranker, unreranked_error

__all__ = [
    "BackgroundServer",
    "Batcher",
    "Overloaded",
    "check_api_key",
    "connection_limits",
    "create_app",
    "run_server",
    "served_model_name",
    "uvicorn_options",
]

ASGIApp = Callable[..., Any]

_log = logging.getLogger("milvus_rerank.serve")  # the name users configure

#: Defaults of the limits (see the module docstring).
MAX_BODY_BYTES = 2_000_000
MAX_DOCUMENTS = 1000
MAX_BATCH_PAIRS = 256
MAX_BATCH_TOKENS = 8192
MAX_PENDING_PAIRS = 16_384
MAX_CONCURRENT_REQUESTS = 512
BODY_TIMEOUT = 30.0
MAX_WAIT_MS = 1000.0
HEADER_TIMEOUT = 10.0
MAX_CONNECTIONS = 1000
#: Characters kept per token of the model window (a generous multiple of the ~4 an English
#: token covers), and the window assumed where the reranker does not say.
CHARS_PER_TOKEN = 32
UNKNOWN_WINDOW = 8192
#: JSON arrays and objects a body may hold: so many a document, plus a fixed allowance.
CONTAINERS_PER_DOCUMENT = 4
EXTRA_CONTAINERS = 256
#: Pieces a body may come in: so many, plus one per so many bytes.
FREE_BODY_PIECES = 1024
BYTES_PER_BODY_PIECE = 256
#: h11's limit on a request's headers (and on any incomplete event), in bytes.
MAX_HEADER_BYTES = 16 * 1024
#: Seconds without progress, while requests wait on scoring, after which ``/health`` says 503.
STALL_AFTER = 60.0
#: The longest error message sent; echoed values are clipped much shorter.
MAX_MESSAGE_CHARS = 1000
_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}
_SPARE_FDS = 64
#: Connections refused with 503 that may linger (reading the request) before closing.
REFUSALS_LINGERING = 64
#: Longest ``instruction`` a request may carry, and how many instructions' views are kept.
MAX_INSTRUCTION_CHARS = 4096
MAX_INSTRUCTION_VIEWS = 64
#: An upstream's answers that refuse the request's content: the client's bad request here.
CLIENT_ERRORS = frozenset({400, 413, 422})


class BackgroundServer:
    """Run an ASGI app under uvicorn on 127.0.0.1 in a background thread (tests, benchmarks).

    The connections are guarded as ``run_server``'s are (header timeout, connection cap,
    body pieces; see the module docstring).

    Example:
        >>> with BackgroundServer(app) as server:  # doctest: +SKIP
        ...     httpx.post(server.url + "/v2/rerank", json=...)
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        header_timeout: float = HEADER_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        try:
            import uvicorn
        except ImportError as exc:
            raise MissingDependencyError("The rerank server", "serve", "uvicorn") from exc
        options = uvicorn_options(
            header_timeout=header_timeout, max_connections=max_connections, lifespan="off"
        )
        config = uvicorn.Config(app, host=host, port=port, access_log=False, **options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._server.server_state.connections)

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start serving; returns once the socket is listening."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _answers_with_usage(scorer: Reranker) -> bool:
    """Whether serve scores ``scorer``'s requests through ``rerank_response`` (usage counted).

    A reranker with a ``score_pairs`` of its own (a batched pass) keeps it, counting nothing.
    """
    own = type(scorer).score_pairs
    return own is Reranker.score_pairs or own is FallbackReranker.score_pairs


def _response_scores(
    scorer: Reranker, query: str, documents: Sequence[str]
) -> tuple[list[float], Usage]:
    """One request's scores, in order, and the ``Usage`` its ``rerank_response`` reported."""
    response = scorer.rerank_response(query, documents)
    if not response.reranked:  # a fail-open fallback has no scores to give
        raise unreranked_error(response)
    scores: list[float | None] = [None] * len(documents)
    for result in response.results:
        if 0 <= result.index < len(scores) and scores[result.index] is None:
            scores[result.index] = result.score
    if any(score is None for score in scores) or len(response.results) != len(documents):
        raise InvalidResponseError(
            f"{scorer.label} answered {len(response.results)} results that are not each of "
            f"the {len(documents)} documents once",
            provider=scorer.provider,
        )
    return [float(score) for score in scores if score is not None], response.usage


def _score_groups(
    groups: Sequence[tuple[Reranker, str, Sequence[str]]],
) -> list[tuple[list[float], Usage | None]]:
    """Each request's scores and usage in one micro-batch: ``serve``'s pairs path.

    A request goes to its scorer (the served reranker, or a request's instruction view) through
    ``rerank_response``, so its usage is its own; the requests of a scorer with its own
    ``score_pairs`` go through one call of it, counting nothing.
    """
    answers: list[tuple[list[float], Usage | None] | None] = [None] * len(groups)
    batched: dict[int, list[int]] = {}
    for i, (scorer, query, documents) in enumerate(groups):
        if _answers_with_usage(scorer):
            answers[i] = _response_scores(scorer, query, documents)
        else:
            batched.setdefault(id(scorer), []).append(i)
    for places in batched.values():
        scorer = groups[places[0]][0]
        queries = [groups[i][1] for i in places for _ in groups[i][2]]
        scores = scorer.score_pairs(queries, [d for i in places for d in groups[i][2]])
        if len(scores) != len(queries):
            raise InvalidResponseError(
                f"{scorer.label} returned {len(scores)} scores for {len(queries)} pairs",
                provider=scorer.provider,
            )
        start = 0
        for i in places:
            end = start + len(groups[i][2])
            answers[i] = ([float(s) for s in scores[start:end]], None)
            start = end
    return [answer for answer in answers if answer is not None]


def _open_file_limit() -> int | None:
    """The soft limit on open files, or None where it is unknown or unlimited."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def connection_limits(max_connections: int = MAX_CONNECTIONS) -> tuple[int, int]:
    """(connections kept open at most, accept backlog) under this process's open-file limit.

    One wake-up of the listening socket accepts up to ``backlog`` connections before any of
    them is looked at, so the cap leaves that many descriptors, and 64 more, spare.
    """
    files = _open_file_limit()
    if files is None:
        return max_connections, 2048
    backlog = max(16, min(2048, files // 4))
    return max(1, min(max_connections, files - backlog - _SPARE_FDS)), backlog


def uvicorn_options(
    *,
    header_timeout: float = HEADER_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    log_level: str = "warning",
    lifespan: str = "auto",
) -> dict[str, Any]:
    """Settings of uvicorn for serving with the connection guards of the module docstring.

    Raises:
        ConfigurationError: a ``header_timeout`` or ``max_connections`` that is not positive.
    """
    _positive("header_timeout", header_timeout, float)
    _positive("max_connections", max_connections)
    cap, backlog = connection_limits(max_connections)
    return {
        "http": _guarded_protocol(float(header_timeout), cap),
        "ws": "none",
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "backlog": backlog,
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": 10,
        "log_level": log_level,
        "lifespan": lifespan,
    }


def _raw_answer(status: int, reason: str, message: str, headers: str = "") -> bytes:
    """A whole ``Connection: close`` answer in vLLM's error shape, for the protocol's refusals."""
    body = json.dumps(_error_body("vllm", status, message)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{headers}connection: close\r\n\r\n"
    )
    return head.encode() + body


def _guarded_protocol(header_timeout: float, max_connections: int) -> type[Any]:
    """The h11 protocol of uvicorn with a header timeout, a connection cap and a body-piece cap."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class CountingConnection(h11.Connection):
        """h11's connection, telling its protocol of each request and counting body pieces."""

        def __init__(self, size: int, on_request: Callable[[], None]) -> None:
            super().__init__(h11.SERVER, size)
            self.on_request = on_request
            self.pieces = 0
            self.received = 0
            self.refusal: str | None = None

        def next_event(self) -> Any:
            event = super().next_event()
            if isinstance(event, h11.Request):
                self.pieces = self.received = 0
                self.on_request()
            elif isinstance(event, h11.Data):
                self.pieces += 1
                self.received += len(event.data)
                if self.pieces > FREE_BODY_PIECES + self.received // BYTES_PER_BODY_PIECE:
                    # uvicorn answers a RemoteProtocolError through send_400_response.
                    self.refusal = (
                        f"the request body came in {self.pieces} pieces for its first "
                        f"{self.received} bytes; at most {FREE_BODY_PIECES} pieces plus one "
                        f"per {BYTES_PER_BODY_PIECE} bytes (send larger chunks, or a "
                        "Content-Length)"
                    )
                    raise h11.RemoteProtocolError(self.refusal)
            return event

    class GuardedH11Protocol(H11Protocol):
        """One connection; see the module docstring's "Connections"."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            size = self.config.h11_max_incomplete_event_size or MAX_HEADER_BYTES
            self.conn: CountingConnection = CountingConnection(size, self._headers_in)
            self.waiting_since: float | None = None  # waiting for request headers since then
            self._header_timer: asyncio.TimerHandle | None = None
            self.refusing = False  # answered 503 at once; the request is read and dropped

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self._make_room():
                self._await_headers()
                return
            self.refusing = True
            self.transport.write(
                _raw_answer(
                    503,
                    "Service Unavailable",
                    f"{max_connections} connections are inside requests (at most "
                    f"{max_connections}); retry later",
                    "retry-after: 1\r\n",
                )
            )
            # Closing with the request unread would reset the connection, and the client
            # might never read the answer: read and drop the request for a moment first.
            lingering = sum(1 for c in self.connections if getattr(c, "refusing", False))
            if lingering > REFUSALS_LINGERING or not self.transport.can_write_eof():
                self.transport.close()
                return
            self.transport.write_eof()
            self.loop.call_later(1.0, self.transport.close)

        def _make_room(self) -> bool:
            """Under the cap, or back under it by closing the longest wait for headers."""
            if len(self.connections) <= max_connections:
                return True
            live = [
                c
                for c in self.connections
                if not c.transport.is_closing() and not getattr(c, "refusing", False)
            ]
            if len(live) <= max_connections:
                return True
            waiting = [
                c
                for c in live
                if isinstance(c, GuardedH11Protocol)
                and c is not self
                and c.waiting_since is not None
            ]
            if not waiting:
                return False
            min(waiting, key=lambda c: c.waiting_since or 0.0).drop()
            return True

        def drop(self) -> None:
            """Close this connection, which holds no request."""
            self._stop_waiting()
            self.transport.close()

        def _await_headers(self) -> None:
            self._stop_waiting()
            self.waiting_since = self.loop.time()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _stop_waiting(self) -> None:
            self.waiting_since = None
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_in(self) -> None:
            self._stop_waiting()

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.waiting_since is None or self.transport.is_closing():
                return
            self.waiting_since = None
            if self.conn.trailing_data[0]:  # part of a request came: say why it ends
                message = f"the request headers did not arrive within {header_timeout:g} s"
                self.transport.write(_raw_answer(408, "Request Timeout", message))
            self.transport.close()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._await_headers()  # before a pipelined request is taken up
            super().on_response_complete()

        def data_received(self, data: bytes) -> None:
            if not self.refusing:
                super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            refusal = self.conn.refusal
            if refusal is None:
                super().send_400_response(msg)
                return
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(_raw_answer(400, "Bad Request", refusal))
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

    return GuardedH11Protocol


def _texts(documents: object) -> object:
    """Cohere and Jina also accept documents as ``{"text": ...}`` objects."""
    if isinstance(documents, list):
        return [
            d["text"] if isinstance(d, dict) and isinstance(d.get("text"), str) else d
            for d in documents
        ]
    return documents


def model_window(reranker: Reranker) -> int | None:
    """The reranker's token window (``Reranker.input_window``), or None where it cannot say."""
    try:
        value = reranker.input_window()
    except RerankError:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def document_passages(reranker: Reranker) -> int:
    """Windows of a document the reranker reads (``Reranker.passages_per_document``); else 1."""
    try:
        value = reranker.passages_per_document()
    except RerankError:
        return 1
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def check_api_key(value: object, source: str = "api_key") -> str:
    """The server's API key from ``source``, stripped; refused as the clients' keys are.

    Raises:
        ConfigurationError: not a str, blank, with whitespace, a control or non-ASCII
            character inside, or shorter than 8 characters (the message never shows it).
    """
    if not isinstance(value, str):
        raise ConfigurationError(
            f"serve: the API key from {source} must be a str, got {type(value).__name__}"
        )
    return _check_key("serve", value, source)


def served_model_name(reranker: Reranker, model_name: str | None = None) -> str:
    """The name ``serve`` answers with: ``model_name``, else the reranker's, never a path.

    A local checkpoint's ``model_name`` is its folder: served as the folder's own name, since
    ``/health`` needs no key and the full path would tell any client the file layout.
    """
    if model_name:
        return model_name
    name = getattr(reranker, "model_name", None)
    if not isinstance(name, str) or not name.strip():
        return type(reranker).__name__
    from pathlib import Path

    looks_local = name.startswith(("/", ".", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", name)
    if looks_local or "\\" in name or Path(name).expanduser().exists():
        last = re.split(r"[\\/]", name.rstrip("\\/"))[-1]
        return last if last not in ("", ".", "..", "~") else type(reranker).__name__
    return name


class _HTTPError(Exception):
    """An answer other than 200, rendered in the route's own error shape."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class _Gone(Exception):
    """The client disconnected: nothing is answered, nothing is logged."""


_VLLM_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    408: "RequestTimeoutError",
    413: "PayloadTooLargeError",
    415: "UnsupportedMediaTypeError",
    421: "MisdirectedRequestError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
}
_TEI_TYPES = {
    401: "Unauthorized",
    429: "Overloaded",
    500: "Backend",
    502: "Backend",
    503: "Backend",
}


def _clip(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _error_body(shape: str, status: int, message: str) -> object:
    message = _clip(message)
    if shape == "cohere":
        return {"id": str(uuid.uuid4()), "message": message}
    if shape == "tei":
        return {"error": message, "error_type": _TEI_TYPES.get(status, "Validation")}
    error_type = _VLLM_TYPES.get(status, "BadRequestError")
    return {"error": {"message": message, "type": error_type, "param": None, "code": status}}


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The name in a ``Host`` header: lower-case, without the port, brackets or final dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _check_hosts(allowed_hosts: object) -> frozenset[str] | None:
    if allowed_hosts is None:
        return None
    if isinstance(allowed_hosts, str) or not isinstance(allowed_hosts, (list, tuple, set)):
        raise ConfigurationError(
            f"allowed_hosts must be a list of host names, got {describe_value(allowed_hosts)}"
        )
    names = set()
    for name in allowed_hosts:
        if not isinstance(name, str) or not name.strip() or any(c in name for c in " \t\r\n/"):
            raise ConfigurationError(
                f"allowed_hosts holds {describe_value(name)}: not a host name (or '*')"
            )
        names.add(_host_name(name))
    return frozenset(names)


def _positive(name: str, value: object, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ConfigurationError(f"{name} must be a positive {kind.__name__}, got {value!r}")
    if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigurationError(f"{name} must be a positive {kind.__name__}, got {value!r}")


def _member_failures(exc: Exception) -> list[Exception]:
    """The failures of a ``FallbackReranker``'s members, nested chains flattened."""
    if not isinstance(exc, AllRerankersFailedError):
        return [exc]
    return [leaf for failure in exc.failures for leaf in _member_failures(failure)]


def _as_one_failure(exc: Exception) -> Exception:
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


def _check_wait(max_wait_ms: object) -> float:
    if (
        isinstance(max_wait_ms, bool)
        or not isinstance(max_wait_ms, (int, float))
        or not 0 <= max_wait_ms <= MAX_WAIT_MS
    ):
        raise ConfigurationError(
            f"max_wait_ms must be milliseconds from 0 to {MAX_WAIT_MS:g}, got {max_wait_ms!r}"
        )
    return float(max_wait_ms)


_STRING = re.compile(rb'"[^"]*"')


def _containers(raw: bytes, bound: int) -> int:
    """JSON arrays and objects in ``raw`` (a count past ``bound`` is exact only outside strings).

    A byte count comes first (a millisecond for 2 MB); only past ``bound`` are the strings
    taken out, escapes first, so brackets inside texts do not count. Linear either way.
    """
    count = raw.count(b"[") + raw.count(b"{")
    if count <= bound:
        return count
    bare = _STRING.sub(b"", raw.replace(b"\\\\", b"").replace(b'\\"', b""))
    return bare.count(b"[") + bare.count(b"{")


def create_app(
    reranker: Reranker,
    *,
    max_wait_ms: float = 2.0,
    max_batch_pairs: int = MAX_BATCH_PAIRS,
    model_name: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_documents: int = MAX_DOCUMENTS,
    max_document_chars: int | None = None,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
    max_pending_pairs: int = MAX_PENDING_PAIRS,
    max_concurrent_requests: int = MAX_CONCURRENT_REQUESTS,
    body_timeout: float = BODY_TIMEOUT,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    batch_workers: int | None = None,
    stall_after: float = STALL_AFTER,
) -> Any:
    """The Starlette app that serves ``reranker`` over the Cohere v2, vLLM/Jina and TEI formats.

    The limits and options are described in the module docstring.

    Raises:
        ConfigurationError: a limit that is not positive, a ``max_wait_ms`` outside 0 to
            1,000, an ``api_key`` that is not a usable key, a bad ``allowed_hosts``.
    """
    try:
        from starlette.applications import Starlette
        from starlette.requests import ClientDisconnect, Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route
    except ImportError as exc:
        raise MissingDependencyError("The rerank server", "serve", "starlette") from exc

    for name, value in (
        ("max_batch_pairs", max_batch_pairs),
        ("max_body_bytes", max_body_bytes),
        ("max_documents", max_documents),
        ("max_batch_tokens", max_batch_tokens),
        ("max_pending_pairs", max_pending_pairs),
        ("max_concurrent_requests", max_concurrent_requests),
    ):
        _positive(name, value)
    if batch_workers is not None:
        _positive("batch_workers", batch_workers)
    _positive("body_timeout", body_timeout, float)
    if max_document_chars is not None:
        _positive("max_document_chars", max_document_chars)
    _positive("stall_after", stall_after, float)
    wait_ms = _check_wait(max_wait_ms)
    if api_key is not None:
        api_key = check_api_key(api_key)
    hosts = _check_hosts(allowed_hosts)
    if hosts is None and api_key is None:
        hosts = frozenset()  # keyless: localhost and IP addresses only
    if hosts is not None and "*" in hosts:
        hosts = None
    window = model_window(reranker)
    # A reranker scoring long documents by their best passage reads several windows of each
    # (a local one with max_passage, or a fallback or cache over one): the cap lets them in.
    passages = document_passages(reranker)
    max_chars = max_document_chars or CHARS_PER_TOKEN * (window or UNKNOWN_WINDOW) * passages
    with_instruction = getattr(reranker, "with_instruction", None)
    views: OrderedDict[str, Reranker] = OrderedDict()
    max_containers = CONTAINERS_PER_DOCUMENT * max_documents + EXTRA_CONTAINERS
    # A local reranker's rows go to its runner with their real token counts; any other
    # reranker (or a local one with its own score_pairs) is served through score_pairs, or,
    # where it answers through rerank_response (an API, a fallback, a cache), request by
    # request: never cut (a fallback's members never mix in one ranking), never sharing a
    # failure, several at once (an upstream's wait holds only its own request).
    local = (
        reranker
        if isinstance(reranker, LocalReranker)
        and type(reranker).score_pairs is LocalReranker.score_pairs
        else None
    )
    whole = local is None and _answers_with_usage(reranker)
    batcher = Batcher(
        reranker.score_pairs,
        wait_ms / 1000.0,
        max_batch_pairs,
        max_tokens=max_batch_tokens,
        max_pending=max_pending_pairs,
        window=window,
        runner=local.runner if local is not None else None,
        family=local.family if local is not None else None,
        score_groups=_score_groups,
        workers=batch_workers,
        whole_requests=whole,
    )
    served_name = served_model_name(reranker, model_name)
    expected_key = api_key.encode() if api_key is not None else None
    active = 0

    def check_auth(request: Request) -> None:
        if expected_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        given = token.strip().encode("utf-8", "surrogateescape")
        # Compare the key whatever the scheme, so the time taken tells nothing either way.
        if not hmac.compare_digest(given, expected_key) or scheme.lower() != "bearer":
            raise _HTTPError(401, "missing or wrong API key (Authorization: Bearer <key>)")

    def check_origin(request: Request, with_body: bool = True) -> None:
        """Refuse what a web page could send to a keyless server (see the module docstring)."""
        host = request.headers.get("host")
        if hosts is not None and host is not None:
            name = _host_name(host)
            allowed = name in _LOOPBACK_NAMES or name.endswith(".localhost") or _is_ip(name)
            if not allowed and name not in hosts:
                raise _HTTPError(
                    421,
                    f"this server does not answer for the host {describe_value(name)} "
                    "(Host header); allow it with --allowed-hosts (allowed_hosts=)",
                )
        if with_body and api_key is None:
            media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
            if media != "application/json" and not (
                media.startswith("application/") and media.endswith("+json")
            ):
                got = f"got {describe_value(media)}" if media else "got none"
                raise _HTTPError(
                    415, f"the request body must be sent as Content-Type: application/json, {got}"
                )

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise _HTTPError(
                413, f"the request body has {int(length)} bytes; at most {max_body_bytes}"
            )
        body = bytearray()

        async def collect() -> None:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > max_body_bytes:
                    raise _HTTPError(
                        413, f"the request body is over {max_body_bytes} bytes; at most that"
                    )

        try:
            await asyncio.wait_for(collect(), body_timeout)
        except asyncio.TimeoutError:
            raise _HTTPError(
                408, f"the request body did not arrive within {body_timeout:g} s"
            ) from None
        except ClientDisconnect:
            raise _Gone from None
        return bytes(body)

    def parse(raw: bytes) -> dict[str, Any]:
        # json.loads holds the GIL throughout, in a thread too: bound its work before it runs.
        containers = _containers(raw, max_containers)
        if containers > max_containers:
            raise _HTTPError(
                400,
                f"the request body holds {containers} JSON arrays and objects; at most "
                f"{max_containers} ({CONTAINERS_PER_DOCUMENT} a document of max_documents, "
                f"plus {EXTRA_CONTAINERS})",
            )
        try:
            body = json.loads(raw)
        except RecursionError:
            raise _HTTPError(400, "the request body is JSON nested too deeply") from None
        except ValueError:
            raise _HTTPError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise _HTTPError(400, "the request body must be a JSON object")
        return body

    async def until_gone(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    def failed(exc: Exception, shape: str) -> _HTTPError:
        """The answer to a reranker's failure, logged as one line without a traceback."""
        exc = _as_one_failure(exc)
        provider = getattr(exc, "provider", None) or reranker.provider
        status_code = getattr(exc, "status_code", None)
        upstream = f" (HTTP {status_code})" if status_code else ""
        headers: dict[str, str] = {}
        if isinstance(exc, RateLimitError):
            status, what = 429, f"the upstream reranker {provider!r} is rate limited{upstream}"
            wait = exc.retry_after
            if wait is not None and math.isfinite(wait) and wait >= 0:
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
            else:
                headers["Retry-After"] = "1"
        elif isinstance(exc, AuthenticationError):
            status, what = 502, f"the upstream reranker {provider!r} refused this server's key"
            what += upstream
        elif isinstance(exc, ProviderUnavailableError):
            status, what = 503, f"the upstream reranker {provider!r} is unavailable{upstream}"
        elif type(exc) is ProviderError and status_code in CLIENT_ERRORS:
            # The upstream refused this request's content (e.g. a pair past its window): the
            # client's bad request, as for any invalid input; its text is not echoed.
            status = 422 if shape == "tei" else 400
            what = f"the upstream reranker {provider!r} refused this request as invalid{upstream}"
        elif isinstance(exc, ProviderError):
            status, what = 502, f"the upstream reranker {provider!r} failed{upstream}"
        elif isinstance(exc, InvalidInputError):
            status, what = 422 if shape == "tei" else 400, str(exc)
        else:
            status, what = 500, f"the reranker failed ({type(exc).__name__})"
        if isinstance(exc, ProviderError):  # the upstream's own text may echo its key
            detail = f"from {provider!r} (HTTP {status_code or 'none'})"
        else:
            detail = " ".join(_clip(str(exc), 300).split())
        _log.warning("serve: answered %d: %s: %s", status, type(exc).__name__, _clip(detail, 400))
        if not isinstance(exc, RerankError):
            _log.debug("serve: the reranker's failure", exc_info=exc)
        return _HTTPError(status, what, headers)

    async def scores(
        request: Request, shape: str, scorer: Reranker, query: str, documents: list[str]
    ) -> tuple[list[float], Usage | None]:
        """The batcher's scores and usage, unless the client leaves first (its work dropped)."""
        cut = [d[:max_chars] for d in documents]
        gone = asyncio.ensure_future(until_gone(request))
        # One path for the reranker and a request's instruction view: the runner encodes the
        # rows with the scorer's family, anything else scores them with the scorer itself.
        family = scorer.family if local is not None and isinstance(scorer, LocalReranker) else None
        work = asyncio.ensure_future(
            batcher.score_counted(query, cut, abandoned=gone, family=family, scorer=scorer)
        )
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
        if not work.done() or work.cancelled():
            raise _Gone
        try:
            return work.result()
        except Overloaded as exc:
            raise _HTTPError(429, str(exc), {"Retry-After": "1"}) from None
        except Exception as exc:
            raise failed(exc, shape) from None

    def instructed(instruction: object, status: int) -> Reranker:
        """Who scores the request: the view for the body's ``instruction``, else the reranker."""
        if instruction is None:
            return reranker
        if not callable(with_instruction):
            from milvus_rerank.core.registry import providers_taking

            takers = ", ".join(providers_taking("instruction"))
            raise _HTTPError(
                422,
                f"instruction is not supported by this server: {type(reranker).__name__} "
                f"takes no instruction (the rerankers that do: {takers})",
            )
        if not isinstance(instruction, str) or len(instruction) > MAX_INSTRUCTION_CHARS:
            raise _HTTPError(
                status,
                f"instruction must be a string of at most {MAX_INSTRUCTION_CHARS} characters or "
                f"null, got {describe_value(instruction)}",
            )
        if instruction == getattr(reranker, "instruction", None):
            return reranker
        view = views.pop(instruction, None)
        if view is None:
            try:
                instruction.encode("utf-8")
                view = with_instruction(instruction)
            except UnicodeEncodeError as exc:
                message = f"instruction is not valid Unicode text (lone surrogate at {exc.start})"
                raise _HTTPError(status, message) from None
            except ConfigurationError as exc:
                raise _HTTPError(status, str(exc)) from None
        views[instruction] = view  # the most recent last; the oldest go past the bound
        while len(views) > MAX_INSTRUCTION_VIEWS:
            views.popitem(last=False)
        return view

    async def ranked(
        request: Request,
        shape: str,
        query: object,
        documents: object,
        top_n: object,
        instruction: object = None,
    ) -> tuple[list[RerankResult], int, int, Usage | None]:
        """The ranked results, the documents scored, their characters kept, and the usage."""
        if isinstance(documents, list) and len(documents) > max_documents:
            raise _HTTPError(
                422, f"documents holds {len(documents)} items; at most {max_documents} a request"
            )
        status = 422 if shape == "tei" else 400
        try:
            q, docs, n = validate_request(query, _texts(documents), top_n)
        except InvalidInputError as exc:
            raise _HTTPError(status, str(exc)) from None
        scorer = instructed(instruction, status)
        if not docs:
            return [], 0, 0, None
        found, usage = await scores(request, shape, scorer, q[:max_chars], docs)
        results = rank(docs, found, n, provider=reranker.provider)
        characters = sum(min(len(d), max_chars) for d in docs)
        return results, len(docs), characters, usage

    def window_option(name: str, value: object, none_values: tuple[object, ...]) -> None:
        """Token limits are honoured when they reach the window (the server truncates there)."""
        if value in none_values and not isinstance(value, bool):
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _HTTPError(400, f"{name} must be a positive int, got {describe_value(value)}")
        if window is None or value < window:
            raise _HTTPError(
                400,
                f"{name}={value} is not supported by this server: it truncates each pair to the "
                f"model window ({window or 'unknown'} tokens) only",
            )

    def flag(body: dict[str, Any], name: str, status: int) -> bool:
        """A boolean option; JSON ``null`` or absent is false."""
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            raise _HTTPError(status, f"{name} must be a bool, got {describe_value(value)}")
        return bool(value)

    async def cohere_v2(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        window_option("max_tokens_per_doc", body.get("max_tokens_per_doc"), (None,))
        with_documents = flag(body, "return_documents", 400)
        query, documents = body.get("query"), body.get("documents")
        results, _, _, usage = await ranked(
            request, "cohere", query, documents, body.get("top_n"), body.get("instruction")
        )
        meta: dict[str, Any] = {"api_version": {"version": "2"}}
        if usage is not None and usage.search_units is not None:  # an upstream's own bill
            meta["billed_units"] = {"search_units": usage.search_units}
        if usage is not None and usage.tokens is not None:
            meta["tokens"] = {"input_tokens": usage.tokens}
        return {
            "id": str(uuid.uuid4()),
            "results": [
                {
                    "index": r.index,
                    "relevance_score": r.score,
                    **({"document": {"text": r.text}} if with_documents else {}),
                }
                for r in results
            ],
            "meta": meta,
        }

    async def vllm(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        window_option("truncate_prompt_tokens", body.get("truncate_prompt_tokens"), (None, -1))
        top_n = body.get("top_n") or None  # vLLM: 0 or absent means all
        query, documents = body.get("query"), body.get("documents")
        results, scored, characters, usage = await ranked(
            request, "vllm", query, documents, top_n, body.get("instruction")
        )
        return {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": served_name,
            "usage": {
                "total_tokens": usage.tokens if usage is not None else None,
                "documents": scored,
                "characters": characters,
            },
            "results": [
                {"index": r.index, "document": {"text": r.text}, "relevance_score": r.score}
                for r in results
            ],
        }

    async def tei(request: Request, body: dict[str, Any]) -> JSONResponse:
        if flag(body, "raw_scores", 422):
            raise _HTTPError(
                422,
                "raw_scores=true is not supported by this server (it returns the "
                "reranker's scores only)",
            )
        direction = body.get("truncation_direction", "Right")
        if direction not in ("Right", "right", None):
            raise _HTTPError(
                422,
                f"truncation_direction={describe_value(direction)} is not supported: only 'Right'",
            )
        truncate = flag(body, "truncate", 422)
        with_text = flag(body, "return_text", 422)
        texts = body.get("texts")
        if not truncate and isinstance(texts, list):
            for i, text in enumerate(texts):
                if isinstance(text, str) and len(text) > max_chars:
                    raise _HTTPError(
                        413,
                        f"texts[{i}] has {len(text)} characters, more than the {max_chars} this "
                        "server tokenizes; pass truncate=true to truncate it",
                    )
        results, _, _, usage = await ranked(
            request, "tei", body.get("query"), texts, None, body.get("instruction")
        )
        answer = [
            {"index": r.index, "score": r.score, **({"text": r.text} if with_text else {})}
            for r in results
        ]
        tokens = usage.tokens if usage is not None else None
        # TEI's own place for the tokens a request used (its body is a bare array).
        headers = {"x-compute-tokens": str(tokens)} if tokens is not None else None
        return JSONResponse(answer, headers=headers)

    Handler = Callable[[Request, dict[str, Any]], Any]

    def busy() -> _HTTPError:
        return _HTTPError(
            429,
            f"{active} requests are being served (at most {max_concurrent_requests}); retry later",
            {"Retry-After": "1"},
        )

    def endpoint(shape: str, answer: Handler | None) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            nonlocal active
            current = shape
            try:
                check_auth(request)
                check_origin(request)
                if active >= max_concurrent_requests:
                    raise busy()  # before the upload, when it is sure to be refused
                body = parse(await read_body(request))
                if active >= max_concurrent_requests:
                    raise busy()  # only requests with their body in hold a slot
                active += 1
                try:
                    if answer is not None:
                        return JSONResponse(await answer(request, body))
                    if "texts" in body:  # /rerank: TEI's format, else vLLM's
                        current = "tei"
                        return await tei(request, body)
                    return JSONResponse(await vllm(request, body))
                finally:
                    active -= 1
            except _HTTPError as exc:
                return JSONResponse(
                    _error_body(current, exc.status, str(exc)),
                    status_code=exc.status,
                    headers=exc.headers,
                )
            except _Gone:
                return Response(status_code=499)  # nobody reads it: the client left
            except Exception as exc:  # a bug: the route's shape all the same, one log line
                error = failed(exc, current)
                return JSONResponse(
                    _error_body(current, error.status, str(error)), status_code=error.status
                )

        return handle

    async def health(request: Request) -> JSONResponse:
        try:
            check_origin(request, with_body=False)
        except _HTTPError as exc:
            return JSONResponse(_error_body("vllm", exc.status, str(exc)), exc.status)
        stalled = batcher.stalled_for()
        if stalled > stall_after:  # requests wait on a scoring path that does not move
            return JSONResponse(
                {
                    "status": "stalled",
                    "model": served_name,
                    "waiting_requests": batcher.active,
                    "seconds_without_progress": round(stalled, 1),
                },
                status_code=503,
            )
        return JSONResponse({"status": "ok", "model": served_name})

    app = Starlette(
        routes=[
            Route("/v2/rerank", endpoint("cohere", cohere_v2), methods=["POST"]),
            Route("/v1/rerank", endpoint("vllm", vllm), methods=["POST"]),
            Route("/rerank", endpoint("vllm", None), methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
    app.state.batcher = batcher
    app.state.instruction_views = views
    app.state.max_document_chars = max_chars
    app.state.served_model_name = served_name
    return app


def run_server(
    reranker: Reranker,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    insecure_no_auth: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    header_timeout: float = HEADER_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    **options: Any,
) -> int:
    """``milvus-rerank serve``: serve ``reranker`` (already loaded) until interrupted.

    Args:
        reranker: The reranker to serve; requests are batched through its model's forward
            passes (a local reranker), its ``rerank_response`` or its own ``score_pairs``.
        host: Bind address; a non-loopback one needs ``api_key`` or ``insecure_no_auth``.
        port: TCP port.
        api_key: The bearer key every rerank request must carry (None: no key).
        insecure_no_auth: Allow a non-loopback host without a key.
        allowed_hosts: ``Host`` names answered besides localhost and IP addresses (``"*"``:
            any); None: checked only without a key, on a loopback host.
        header_timeout: Seconds a connection may take to send its request headers.
        max_connections: Connections kept open at most (also bounded by the open-file limit).
        **options: ``create_app``'s keywords (``max_wait_ms``, ``model_name``, the limits).

    Raises:
        ConfigurationError: a non-loopback host without a key or ``insecure_no_auth``, or a
            bad limit or key.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("The rerank server", "serve", "uvicorn") from exc
    if not _is_loopback(host) and api_key is None and not insecure_no_auth:
        raise ConfigurationError(
            f"host {host!r} is reachable beyond this machine: set an API key (--api-key or "
            "MILVUS_RERANK_API_KEY) or pass --insecure-no-auth to serve it without one"
        )
    if allowed_hosts is None and api_key is None and not _is_loopback(host):
        allowed_hosts = ["*"]  # --insecure-no-auth: anyone may call it already
    app = create_app(reranker, api_key=api_key, allowed_hosts=allowed_hosts, **options)
    settings = uvicorn_options(header_timeout=header_timeout, max_connections=max_connections)
    auth = "Bearer key required" if api_key is not None else "no API key"
    cap, _ = connection_limits(max_connections)
    print(
        f"milvus-rerank serve: {reranker!r} as {app.state.served_model_name!r} on "
        f"http://{host}:{port} (POST /v2/rerank, /v1/rerank, /rerank; GET /health; {auth}; "
        f"at most {cap} connections)",
        file=sys.stderr,
    )
    gc.collect()
    gc.freeze()  # the model's objects: collections during requests need not walk them
    uvicorn.run(app, host=host, port=port, **settings)
    return 0
