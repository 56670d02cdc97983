"""``milvus-rerank serve``: any local reranker over the Cohere v2, vLLM/Jina and TEI wire formats.

Routes (all ``POST``, JSON):

* ``/v2/rerank`` — Cohere v2 (``{"query", "documents", "top_n"?}`` → ``{"id", "results", "meta"}``);
  Milvus Lite's ``cohere`` provider posts here through ``base_url=http://host:port/v2``.
* ``/v1/rerank`` — vLLM / Jina (``results`` with ``document.text``, ``usage``).
* ``/rerank`` — a body with ``texts`` gets TEI's bare array; a body with ``documents`` gets
  vLLM's answer. Milvus 2.6's ``tei`` and ``vllm`` providers both post to ``{endpoint}/rerank``.
* ``GET /health`` — ``{"status": "ok"}`` (never needs the API key).

Errors come in each route's own shape: Cohere ``{"id", "message"}``, vLLM ``{"error":
{"message", "type", "param", "code"}}``, TEI ``{"error", "error_type"}``. On ``/rerank``, errors
found before the body is parsed (size, time, JSON) use vLLM's shape, since the format is not
known yet.

Limits (``create_app`` keyword / ``serve`` flag, default):

* ``max_body_bytes`` / ``--max-body-bytes`` (2,000,000, TEI's ``--payload-limit``): a larger body
  is answered 413, from its ``Content-Length`` or as soon as the streamed bytes pass it.
* ``body_timeout`` / ``--body-timeout`` (30 s): a body still arriving after that is answered 408.
* ``max_documents`` / ``--max-documents`` (1,000, TEI's ``--max-client-batch-size``; Milvus's own
  batches fit): more documents in one request are answered 422.
* ``max_document_chars`` / ``--max-document-chars`` (None: 32 characters per token of the model
  window, e.g. 16,384 for a 512-token model; 262,144 where the window is unknown; times
  ``max_passages`` for a local reranker with ``long_documents="max_passage"``): the query
  and each document are cut to this many characters before tokenization, so a 50 MB document
  is never tokenized whole. A text that fits the window is far shorter, and scores the same.
* ``max_batch_pairs`` (256) and ``max_batch_tokens`` / ``--max-batch-tokens`` (8,192 tokens): one
  model call holds at most this much. A local reranker's pairs count the tokens they encode to
  (each request is tokenized first, in a worker thread); any other reranker's pair counts an
  estimate, ``ceil(characters / 4) + 3`` tokens, at most the window. A large request is cut
  into such micro-batches, served round-robin with the other requests waiting, so a small
  request is never stuck behind a large one.
* ``max_pending_pairs`` / ``--max-pending-pairs`` (16,384) and ``max_concurrent_requests`` /
  ``--max-concurrent-requests`` (512, TEI's ``--max-concurrent-requests``): past either, a
  request is answered 429 with ``Retry-After: 1``.
* A client that disconnects has its pending work dropped, quietly (no traceback per abort).
* JSON nested too deeply for the parser is a 400, never a 500.

Request options: Cohere's ``return_documents`` is honoured, and its ``max_tokens_per_doc`` and
vLLM's ``truncate_prompt_tokens`` are accepted when they are at least the model window (the
server always truncates pairs to the window; -1 is vLLM's "the window"); smaller values are
answered 400 (unsupported). TEI's ``raw_scores=true`` is answered 422 (the reranker's public
interface gives activated scores only), ``truncation_direction="Left"`` 422, and
``truncate=false`` answers 413 for a text longer than ``max_document_chars`` (TEI's answer to an
input past the window; shorter ones are truncated to the window, since the server does not count
tokens). vLLM's ``usage`` reports ``documents`` and ``characters`` scored; ``total_tokens`` is
``null``: the reranker does not expose its tokenizer, and the server invents no count.

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

Authentication: with ``api_key`` (``--api-key``, or ``MILVUS_RERANK_API_KEY``) every rerank
route needs ``Authorization: Bearer <key>`` (compared in constant time; the key is never
logged), else 401. ``run_server`` refuses to bind a non-loopback host without a key unless
``insecure_no_auth=True`` (``--insecure-no-auth``).

Concurrent requests are batched together for the model by the library's micro-batcher
(``providers/_batching.py``, the one every local reranker uses across its callers): the
requests waiting are scored together, and while requests do come together it waits up to
``max_wait_ms`` to gather them (a lone request never waits). One worker thread serves every
event loop running the app.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from .base import Reranker, describe_value, rank, validate_request
from .errors import ConfigurationError, InvalidInputError, MissingDependencyError, RerankError
from .providers._batching import Overloaded
from .providers._batching import RequestBatcher as Batcher
from .providers._local import LocalReranker
from .results import RerankResult

__all__ = ["BackgroundServer", "Batcher", "Overloaded", "create_app", "run_server"]

ASGIApp = Callable[..., Any]

#: Defaults of the limits (see the module docstring).
MAX_BODY_BYTES = 2_000_000
MAX_DOCUMENTS = 1000
MAX_BATCH_PAIRS = 256
MAX_BATCH_TOKENS = 8192
MAX_PENDING_PAIRS = 16_384
MAX_CONCURRENT_REQUESTS = 512
BODY_TIMEOUT = 30.0
#: Characters kept per token of the model window (a generous multiple of the ~4 an English
#: token covers), and the window assumed where the reranker does not say.
CHARS_PER_TOKEN = 32
UNKNOWN_WINDOW = 8192
_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
#: Longest ``instruction`` a request may carry, and how many instructions' views are kept.
MAX_INSTRUCTION_CHARS = 4096
MAX_INSTRUCTION_VIEWS = 64


class BackgroundServer:
    """Run an ASGI app under uvicorn on 127.0.0.1 in a background thread (tests, benchmarks).

    Example:
        >>> with BackgroundServer(app) as server:  # doctest: +SKIP
        ...     httpx.post(server.url + "/v2/rerank", json=...)
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            import uvicorn
        except ImportError as exc:
            raise MissingDependencyError("The rerank server", "serve", "uvicorn") from exc
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

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


ScorePairs = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


class _InstructedQuery(str):
    """A query that carries the reranker scoring it (a request's instruction view)."""

    reranker: Reranker


def _instructed_score_pairs(reranker: Reranker) -> ScorePairs:
    """``reranker.score_pairs``, sending the pairs of an ``_InstructedQuery`` to its own view."""

    def score_pairs(queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        groups: dict[int, tuple[Reranker, list[int]]] = {}
        for i, query in enumerate(queries):
            scorer = query.reranker if isinstance(query, _InstructedQuery) else reranker
            groups.setdefault(id(scorer), (scorer, []))[1].append(i)
        scores = [0.0] * len(queries)
        for scorer, rows in groups.values():
            part = scorer.score_pairs([str(queries[i]) for i in rows], [documents[i] for i in rows])
            for i, score in zip(rows, part, strict=True):
                scores[i] = score
        return scores

    return score_pairs


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
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}
_TEI_TYPES = {401: "Unauthorized", 429: "Overloaded"}


def _error_body(shape: str, status: int, message: str) -> object:
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


def _positive(name: str, value: object, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ConfigurationError(f"{name} must be a positive {kind.__name__}, got {value!r}")
    if not value > 0:
        raise ConfigurationError(f"{name} must be a positive {kind.__name__}, got {value!r}")


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
) -> Any:
    """The Starlette app that serves ``reranker`` over the Cohere v2, vLLM/Jina and TEI formats.

    The limits and options are described in the module docstring.

    Raises:
        ConfigurationError: a limit that is not positive, or an empty ``api_key``.
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
    _positive("body_timeout", body_timeout, float)
    if max_document_chars is not None:
        _positive("max_document_chars", max_document_chars)
    if api_key is not None and not api_key.strip():
        raise ConfigurationError("api_key must be a non-empty string (or None for no key)")
    window = model_window(reranker)
    # A local reranker scoring long documents by their best passage reads up to
    # max_passages windows of each: the cap lets that many through.
    passages = reranker.passages_per_document() if isinstance(reranker, LocalReranker) else 1
    max_chars = max_document_chars or CHARS_PER_TOKEN * (window or UNKNOWN_WINDOW) * passages
    with_instruction = getattr(reranker, "with_instruction", None)
    views: OrderedDict[str, Reranker] = OrderedDict()
    max_chars = max_document_chars or CHARS_PER_TOKEN * (window or UNKNOWN_WINDOW)
    # A local reranker's rows go to its runner with their real token counts; any other
    # reranker (or a local one with its own score_pairs) is served through score_pairs.
    local = (
        reranker
        if isinstance(reranker, LocalReranker)
        and type(reranker).score_pairs is LocalReranker.score_pairs
        else None
    )
    batcher = Batcher(
        _instructed_score_pairs(reranker) if callable(with_instruction) else reranker.score_pairs,
        max_wait_ms / 1000.0,
        max_batch_pairs,
        max_tokens=max_batch_tokens,
        max_pending=max_pending_pairs,
        window=window,
        runner=local.runner if local is not None else None,
        family=local.family if local is not None else None,
    )
    served_name = model_name or getattr(reranker, "model_name", None) or type(reranker).__name__
    expected_auth = f"Bearer {api_key}".encode() if api_key is not None else None
    active = 0

    def check_auth(request: Request) -> None:
        if expected_auth is None:
            return
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected_auth):
            raise _HTTPError(401, "missing or wrong API key (Authorization: Bearer <key>)")

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise _HTTPError(
                413, f"the request body has {int(length)} bytes; at most {max_body_bytes}"
            )
        chunks: list[bytes] = []
        size = 0

        async def collect() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body_bytes:
                    raise _HTTPError(
                        413, f"the request body is over {max_body_bytes} bytes; at most that"
                    )
                chunks.append(chunk)

        try:
            await asyncio.wait_for(collect(), body_timeout)
        except asyncio.TimeoutError:
            raise _HTTPError(
                408, f"the request body did not arrive within {body_timeout:g} s"
            ) from None
        except ClientDisconnect:
            raise _Gone from None
        return b"".join(chunks)

    def parse(raw: bytes) -> dict[str, Any]:
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

    async def scores(request: Request, query: str, documents: list[str]) -> list[float]:
        """The batcher's scores, unless the client leaves first (then its work is dropped).

        ``query`` is already cut to ``max_chars``; the documents are cut here.
        """
        cut = [d[:max_chars] for d in documents]
        gone = asyncio.ensure_future(until_gone(request))
        view = query.reranker if isinstance(query, _InstructedQuery) else None
        family = getattr(view, "family", None) if local is not None else None
        work = asyncio.ensure_future(batcher.score(str(query), cut, abandoned=gone, family=family))
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

    def instructed(query: str, instruction: object, status: int) -> str:
        """``query``, carrying the view for the body's ``instruction`` when it names one."""
        if instruction is None:
            return query
        if not callable(with_instruction):
            from .registry import providers_taking

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
            return query
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
        tagged = _InstructedQuery(query)
        tagged.reranker = view
        return tagged

    async def ranked(
        request: Request,
        shape: str,
        query: object,
        documents: object,
        top_n: object,
        instruction: object = None,
    ) -> tuple[list[RerankResult], int, int]:
        """The ranked results, with the documents scored and their characters kept."""
        if isinstance(documents, list) and len(documents) > max_documents:
            raise _HTTPError(
                422, f"documents holds {len(documents)} items; at most {max_documents} a request"
            )
        status = 422 if shape == "tei" else 400
        try:
            q, docs, n = validate_request(query, _texts(documents), top_n)
        except InvalidInputError as exc:
            raise _HTTPError(status, str(exc)) from None
        q = instructed(q[:max_chars], instruction, status)  # cut first: a cut drops the view
        if not docs:
            return [], 0, 0
        results = rank(docs, await scores(request, q, docs), n, provider=reranker.provider)
        characters = sum(min(len(d), max_chars) for d in docs)
        return results, len(docs), characters

    def window_option(name: str, value: object, none_values: tuple[object, ...]) -> None:
        """Token limits are honoured when they reach the window (the server truncates there)."""
        if value in none_values and not isinstance(value, bool):
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _HTTPError(400, f"{name} must be a positive int, got {value!r}")
        if window is None or value < window:
            raise _HTTPError(
                400,
                f"{name}={value} is not supported by this server: it truncates each pair to the "
                f"model window ({window or 'unknown'} tokens) only",
            )

    async def cohere_v2(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        window_option("max_tokens_per_doc", body.get("max_tokens_per_doc"), (None,))
        with_documents = body.get("return_documents", False)
        if not isinstance(with_documents, bool):
            raise _HTTPError(400, f"return_documents must be a bool, got {with_documents!r}")
        query, documents = body.get("query"), body.get("documents")
        results, _, _ = await ranked(
            request, "cohere", query, documents, body.get("top_n"), body.get("instruction")
        )
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
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        }

    async def vllm(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        window_option("truncate_prompt_tokens", body.get("truncate_prompt_tokens"), (None, -1))
        top_n = body.get("top_n") or None  # vLLM: 0 or absent means all
        query, documents = body.get("query"), body.get("documents")
        results, scored, characters = await ranked(
            request, "vllm", query, documents, top_n, body.get("instruction")
        )
        return {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": body.get("model") or served_name,
            "usage": {
                "total_tokens": None,
                "documents": scored,
                "characters": characters,
            },
            "results": [
                {"index": r.index, "document": {"text": r.text}, "relevance_score": r.score}
                for r in results
            ],
        }

    async def tei(request: Request, body: dict[str, Any]) -> list[dict[str, Any]]:
        if body.get("raw_scores", False) is not False:
            raise _HTTPError(
                422,
                "raw_scores=true is not supported by this server (it returns the "
                "reranker's scores only)",
            )
        direction = body.get("truncation_direction", "Right")
        if direction not in ("Right", "right", None):
            raise _HTTPError(
                422, f"truncation_direction={direction!r} is not supported: only 'Right'"
            )
        truncate = body.get("truncate", False)
        if not isinstance(truncate, bool) and truncate is not None:
            raise _HTTPError(422, f"truncate must be a bool, got {truncate!r}")
        texts = body.get("texts")
        if not truncate and isinstance(texts, list):
            for i, text in enumerate(texts):
                if isinstance(text, str) and len(text) > max_chars:
                    raise _HTTPError(
                        413,
                        f"texts[{i}] has {len(text)} characters, more than the {max_chars} this "
                        "server tokenizes; pass truncate=true to truncate it",
                    )
        results, _, _ = await ranked(
            request, "tei", body.get("query"), texts, None, body.get("instruction")
        )
        with_text = bool(body.get("return_text"))
        return [
            {"index": r.index, "score": r.score, **({"text": r.text} if with_text else {})}
            for r in results
        ]

    Handler = Callable[[Request, dict[str, Any]], Any]

    def endpoint(shape: str, answer: Handler | None) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            nonlocal active
            current = shape
            try:
                check_auth(request)
                if active >= max_concurrent_requests:
                    raise _HTTPError(
                        429,
                        f"{active} requests are being served (at most {max_concurrent_requests})"
                        "; retry later",
                        {"Retry-After": "1"},
                    )
                active += 1
                try:
                    body = parse(await read_body(request))
                    if answer is not None:
                        return JSONResponse(await answer(request, body))
                    if "texts" in body:  # /rerank: TEI's format, else vLLM's
                        current = "tei"
                        return JSONResponse(await tei(request, body))
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

        return handle

    async def health(request: Request) -> JSONResponse:
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
    return app


def run_server(
    reranker: Reranker,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    insecure_no_auth: bool = False,
    **options: Any,
) -> int:
    """``milvus-rerank serve``: serve ``reranker`` (already loaded) until interrupted.

    Args:
        reranker: The reranker to serve; requests are batched through its ``score_pairs``.
        host: Bind address; a non-loopback one needs ``api_key`` or ``insecure_no_auth``.
        port: TCP port.
        api_key: The bearer key every rerank request must carry (None: no key).
        insecure_no_auth: Allow a non-loopback host without a key.
        **options: ``create_app``'s keywords (``max_wait_ms``, ``model_name``, the limits).

    Raises:
        ConfigurationError: a non-loopback host without a key or ``insecure_no_auth``, or a
            bad limit.
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
    app = create_app(reranker, api_key=api_key, **options)
    auth = "Bearer key required" if api_key is not None else "no API key"
    print(
        f"milvus-rerank serve: {reranker!r} on http://{host}:{port} "
        f"(POST /v2/rerank, /v1/rerank, /rerank; GET /health; {auth})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
