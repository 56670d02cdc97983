"""``milvus-rerank serve``: any local reranker over the Cohere v2, vLLM/Jina and TEI wire formats.

Routes (all ``POST``, JSON):

* ``/v2/rerank`` — Cohere v2 (``{"query", "documents", "top_n"?}`` → ``{"id", "results", "meta"}``);
  Milvus Lite's ``cohere`` provider posts here through ``base_url=http://host:port/v2``.
* ``/v1/rerank`` — vLLM / Jina (``results`` with ``document.text``, ``usage``).
* ``/rerank`` — a body with ``texts`` gets TEI's bare array; a body with ``documents`` gets
  vLLM's answer. Milvus 2.6's ``tei`` and ``vllm`` providers both post to ``{endpoint}/rerank``.
* ``GET /health`` — ``{"status": "ok"}``.

Concurrent requests are batched together for the model: a micro-batcher scores the requests
waiting together in one pass, and while requests do come together it waits up to
``max_wait_ms`` (or until ``max_batch_pairs`` pairs are waiting) to gather them.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .base import Reranker, rank, validate_request
from .errors import InvalidInputError, MissingDependencyError
from .results import RerankResult

__all__ = ["BackgroundServer", "Batcher", "create_app", "run_server"]

ASGIApp = Callable[..., Any]


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


class Batcher:
    """Collects concurrent rerank requests and scores their pairs together, one pass per batch.

    A request waits at most ``max_wait`` seconds for company, and a batch holds at most
    ``max_pairs`` pairs (a single larger request still goes alone). The wait is only paid
    while requests do come together (the last batch held more than one): a lone client is
    scored at once, and requests that arrive while the model works form the next batch anyway.
    Scoring runs in a worker thread, so the event loop keeps accepting requests meanwhile.
    """

    def __init__(
        self, score_pairs: ScorePairs, max_wait: float = 0.002, max_pairs: int = 256
    ) -> None:
        self.score_pairs = score_pairs
        self.max_wait = max_wait
        self.max_pairs = max_pairs
        self.batches = 0
        self.requests = 0
        self._last_batch_requests = 0
        self._pending: list[tuple[str, list[str], asyncio.Future[list[float]]]] = []
        self._workers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
            weakref.WeakKeyDictionary()
        )
        self._wakeup: asyncio.Event | None = None

    async def score(self, query: str, documents: list[str]) -> list[float]:
        """Scores of ``documents`` for ``query``, computed in a shared batch."""
        loop = asyncio.get_running_loop()
        if self._wakeup is None or loop not in self._workers:
            self._wakeup = asyncio.Event()
            self._workers[loop] = loop.create_task(self._work(self._wakeup))
        future: asyncio.Future[list[float]] = loop.create_future()
        self._pending.append((query, documents, future))
        self._wakeup.set()
        return await future

    async def _work(self, wakeup: asyncio.Event) -> None:
        while True:
            await wakeup.wait()
            wakeup.clear()
            if self.max_wait > 0 and self._last_batch_requests > 1:
                await asyncio.sleep(self.max_wait)
            while self._pending:
                batch = self._take()
                queries = [q for q, docs, _ in batch for _ in docs]
                documents = [d for _, docs, _ in batch for d in docs]
                try:
                    scores = await asyncio.to_thread(self.score_pairs, queries, documents)
                except Exception as exc:  # noqa: BLE001 - every waiter gets the failure
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.batches += 1
                self.requests += len(batch)
                self._last_batch_requests = len(batch)
                start = 0
                for _, docs, future in batch:
                    if not future.done():
                        future.set_result(list(scores[start : start + len(docs)]))
                    start += len(docs)

    def _take(self) -> list[tuple[str, list[str], asyncio.Future[list[float]]]]:
        batch = [self._pending.pop(0)]
        pairs = len(batch[0][1])
        while self._pending and pairs + len(self._pending[0][1]) <= self.max_pairs:
            pairs += len(self._pending[0][1])
            batch.append(self._pending.pop(0))
        return batch


def _texts(documents: object) -> object:
    """Cohere and Jina also accept documents as ``{"text": ...}`` objects."""
    if isinstance(documents, list):
        return [
            d["text"] if isinstance(d, dict) and isinstance(d.get("text"), str) else d
            for d in documents
        ]
    return documents


def create_app(
    reranker: Reranker,
    *,
    max_wait_ms: float = 2.0,
    max_batch_pairs: int = 256,
    model_name: str | None = None,
) -> Any:
    """The Starlette app that serves ``reranker`` over the Cohere v2, vLLM/Jina and TEI formats."""
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route
    except ImportError as exc:
        raise MissingDependencyError("The rerank server", "serve", "starlette") from exc

    batcher = Batcher(reranker.score_pairs, max_wait_ms / 1000.0, max_batch_pairs)
    served_name = model_name or getattr(reranker, "model_name", None) or type(reranker).__name__

    async def ranked(query: object, documents: object, top_n: object) -> list[RerankResult]:
        q, docs, n = validate_request(query, _texts(documents), top_n)
        if not docs:
            return []
        return rank(docs, await batcher.score(q, docs), n, provider=reranker.provider)

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise InvalidInputError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise InvalidInputError("the request body must be a JSON object")
        return body

    def vllm_answer(body: dict[str, Any], results: list[RerankResult]) -> dict[str, Any]:
        return {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": body.get("model") or served_name,
            "usage": {"total_tokens": 0},
            "results": [
                {"index": r.index, "document": {"text": r.text}, "relevance_score": r.score}
                for r in results
            ],
        }

    async def cohere_v2(request: Request) -> JSONResponse:
        try:
            body = await body_of(request)
            results = await ranked(body.get("query"), body.get("documents"), body.get("top_n"))
        except InvalidInputError as exc:
            return JSONResponse({"id": uuid.uuid4().hex, "message": str(exc)}, status_code=400)
        return JSONResponse(
            {
                "id": str(uuid.uuid4()),
                "results": [{"index": r.index, "relevance_score": r.score} for r in results],
                "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
            }
        )

    def vllm_error(exc: Exception) -> JSONResponse:
        error = {"message": str(exc), "type": "BadRequestError", "param": None, "code": 400}
        return JSONResponse({"error": error}, status_code=400)

    async def vllm_rerank(body: dict[str, Any]) -> JSONResponse:
        try:
            top_n = body.get("top_n") or None  # vLLM: 0 or absent means all
            results = await ranked(body.get("query"), body.get("documents"), top_n)
        except InvalidInputError as exc:
            return vllm_error(exc)
        return JSONResponse(vllm_answer(body, results))

    async def openai_v1(request: Request) -> JSONResponse:
        try:
            body = await body_of(request)
        except InvalidInputError as exc:
            return vllm_error(exc)
        return await vllm_rerank(body)

    async def root_rerank(request: Request) -> JSONResponse:
        try:
            body = await body_of(request)
        except InvalidInputError as exc:
            return vllm_error(exc)
        if "texts" not in body:
            return await vllm_rerank(body)
        try:  # TEI: a bare array; the scores of every text, best first
            results = await ranked(body.get("query"), body.get("texts"), None)
        except InvalidInputError as exc:
            return JSONResponse({"error": str(exc), "error_type": "Validation"}, status_code=422)
        with_text = bool(body.get("return_text"))
        return JSONResponse(
            [
                {"index": r.index, "score": r.score, **({"text": r.text} if with_text else {})}
                for r in results
            ]
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": served_name})

    app = Starlette(
        routes=[
            Route("/v2/rerank", cohere_v2, methods=["POST"]),
            Route("/v1/rerank", openai_v1, methods=["POST"]),
            Route("/rerank", root_rerank, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
    app.state.batcher = batcher
    return app


def run_server(
    reranker: Reranker,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_wait_ms: float = 2.0,
    model_name: str | None = None,
) -> int:
    """``milvus-rerank serve``: serve ``reranker`` (already loaded) until interrupted.

    Args:
        reranker: The reranker to serve; requests are batched through its ``score_pairs``.
        host: Bind address.
        port: TCP port.
        max_wait_ms: How long a request may wait for others to share its batch.
        model_name: The model name answers report (default: the reranker's own).
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("The rerank server", "serve", "uvicorn") from exc
    app = create_app(reranker, max_wait_ms=max_wait_ms, model_name=model_name)
    print(
        f"milvus-rerank serve: {reranker!r} on http://{host}:{port} "
        "(POST /v2/rerank, /v1/rerank, /rerank; GET /health)",
        file=sys.stderr,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
