"""``create_app``: the Starlette app serving one reranker over its routes.

The app's state (``ServeState``) is built here once: limits checked, key and hosts, the
served name, the character cap from the model window, the batcher chosen by the reranker's
declared ``batching``, the metrics and the drain. Routes map to a wire format each
(``formats``); ``/health`` and ``/metrics`` answer ``GET``, and every answer is counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from milvus_rerank.app.serve.access import check_api_key, check_hosts
from milvus_rerank.app.serve.batcher import RequestBatcher
from milvus_rerank.app.serve.drain import Drain
from milvus_rerank.app.serve.failures import upstream_providers
from milvus_rerank.app.serve.formats import RANK_ROUTES, WireFormat
from milvus_rerank.app.serve.limits import CHARS_PER_TOKEN, UNKNOWN_WINDOW, ServeLimits
from milvus_rerank.app.serve.metrics import MetricsMiddleware, ServeMetrics
from milvus_rerank.app.serve.scoring import aresponse_scores, score_groups
from milvus_rerank.app.serve.state import (
    ServeState,
    document_passages,
    model_window,
    served_model_name,
)
from milvus_rerank.core.base import Reranker
from milvus_rerank.core.errors import ConfigurationError, MissingDependencyError
from milvus_rerank.providers.local.reranker import LocalReranker

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["ROUTES", "build_state", "create_app"]

#: The rank routes (all ``POST``) and the wire format each speaks.
#: The rank routes and their wire formats (``formats.RANK_ROUTES``).
ROUTES = RANK_ROUTES


def _batcher(
    reranker: Reranker, local: LocalReranker | None, limits: ServeLimits, window: int | None
) -> RequestBatcher:
    """The batcher the reranker's ``batching`` asks for (``local``: the reranker, for ``"rows"``).

    ``"rows"``: its runner's rows with real token counts; ``"pairs"``: micro-batches of pairs
    through ``score_pairs``; ``"whole"`` (an API, a fallback, a cache): request by request,
    never cut (a fallback's members never mix in one ranking), never sharing a failure,
    several at once (an upstream's wait holds only its own request), through the scorer's
    own async path where it declares ``native_async``.
    """
    return RequestBatcher(
        reranker.score_pairs,
        limits.max_wait_ms / 1000.0,
        limits.max_batch_pairs,
        max_tokens=limits.max_batch_tokens,
        max_pending=limits.max_pending_pairs,
        window=window,
        runner=local.runner if local is not None else None,
        family=local.family if local is not None else None,
        score_groups=score_groups,
        workers=limits.batch_workers,
        whole_requests=local is None and reranker.batching == "whole",
        score_request=aresponse_scores,
    )


def build_state(
    reranker: Reranker,
    limits: ServeLimits,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> ServeState:
    """The app's state: key and hosts checked, sizes taken from the reranker, its batcher.

    Raises:
        ConfigurationError: an ``api_key`` that is not a usable key, a bad ``allowed_hosts``.
        MissingDependencyError: ``prometheus-client`` is not installed.
    """
    key = check_api_key(api_key) if api_key is not None else None
    hosts = check_hosts(allowed_hosts)
    if hosts is None and key is None:
        hosts = frozenset()  # keyless: localhost and IP addresses only
    if hosts is not None and "*" in hosts:
        hosts = None
    window = model_window(reranker)
    # A reranker scoring long documents by their best passage reads several windows of each
    # (a local one with max_passage, or a fallback or cache over one): the cap lets them in.
    passages = document_passages(reranker)
    max_chars = limits.max_document_chars or CHARS_PER_TOKEN * (window or UNKNOWN_WINDOW) * passages
    local = (
        reranker if isinstance(reranker, LocalReranker) and reranker.batching == "rows" else None
    )
    batcher = _batcher(reranker, local, limits, window)
    drain = Drain(on_start=batcher.prefer_oldest)  # whole answers first once draining
    metrics = ServeMetrics(queue=lambda: batcher.pending_pairs, inflight=lambda: drain.inflight)
    batcher.on_batch = metrics.batch
    return ServeState(
        reranker=reranker,
        limits=limits,
        batcher=batcher,
        served_name=served_model_name(reranker, model_name),
        window=window,
        max_chars=max_chars,
        api_key=key.encode() if key is not None else None,
        hosts=hosts,
        local=local,
        metrics=metrics,
        drain=drain,
        upstreams=upstream_providers(reranker),
    )


def create_app(
    reranker: Reranker,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    limits: ServeLimits | None = None,
    **overrides: Any,
) -> Any:
    """The Starlette app that serves ``reranker`` over the Cohere v2, vLLM/Jina and TEI formats.

    Args:
        reranker: The reranker to serve (load it first, or the first request does).
        model_name: The served model name (default: the reranker's, never a path).
        api_key: The bearer key every rerank route needs (None: none).
        allowed_hosts: ``Host`` names answered besides localhost and IP addresses (``"*"``:
            any); None: checked only without a key.
        limits: The limits (default: ``ServeLimits()``).
        **overrides: Fields of ``ServeLimits`` by name (``max_wait_ms=``, ``max_documents=``...),
            replacing those of ``limits``.

    Raises:
        ConfigurationError: a limit that is not positive, a ``max_wait_ms`` outside 0 to
            1,000, an ``api_key`` that is not a usable key, a bad ``allowed_hosts``.
            A connection limit (``header_timeout``, ``max_connections``) given as an override:
            the server's, not the app's.
        TypeError: an override that is no ``ServeLimits`` field.
    """
    try:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.routing import Route
    except ImportError as exc:
        raise MissingDependencyError("The rerank server", "serve", "starlette") from exc
    from milvus_rerank.app.serve import handlers

    connection_only = sorted({"header_timeout", "max_connections"} & set(overrides))
    if connection_only:  # taken here, they would be ignored: the app holds no connections
        raise ConfigurationError(
            f"{', '.join(connection_only)}: a connection limit of the server, not of the app; "
            "pass it to run_server (or `milvus-rerank serve`), or through limits="
        )
    limits = dataclasses.replace(limits or ServeLimits(), **overrides)
    state = build_state(
        reranker, limits, model_name=model_name, api_key=api_key, allowed_hosts=allowed_hosts
    )

    def endpoint(fmt: WireFormat) -> Callable[[Request], Awaitable[Response]]:
        async def answer(request: Request) -> Response:
            return await handlers.handle(state, fmt, request)

        return answer

    async def health(request: Request) -> Response:
        return await handlers.health(state, request)

    async def metrics(request: Request) -> Response:
        return await handlers.metrics(state, request)

    routes = [Route(path, endpoint(fmt), methods=["POST"]) for path, fmt in ROUTES]
    routes += [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    counted = Middleware(MetricsMiddleware, metrics=state.metrics)
    app = Starlette(routes=routes, middleware=[counted])
    # A trailing slash is a 404, not a 307 whose Location echoes the client's Host header.
    app.router.redirect_slashes = False
    app.state.serve = state
    # Shortcuts to the state's parts, for operators and tests that inspect a running app.
    app.state.batcher = state.batcher
    app.state.instruction_views = state.views
    app.state.max_document_chars = state.max_chars
    app.state.served_model_name = state.served_name
    return app
