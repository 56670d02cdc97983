"""``serve``'s Prometheus metrics: ``ServeMetrics``, and the middleware counting each answer.

One ``ServeMetrics`` per app, in a registry of its own (docs/serve.md, "Metrics").

Labels come from fixed sets (a route template, a status code, a refusal's reason), never from
the request: an unknown path is ``other``, and no key, query or document reaches a metric.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from milvus_rerank.app.serve.formats import RANK_ROUTES as MOUNTED
from milvus_rerank.core.errors import MissingDependencyError
from milvus_rerank.core.results import Usage

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "DURATION_BUCKETS",
    "PAIRS_BUCKETS",
    "RANK_ROUTES",
    "REASONS",
    "ROUTES",
    "MetricsMiddleware",
    "ServeMetrics",
    "reason_for",
    "route_label",
]

#: The rank routes (``POST``), and every route label: the rank routes, ``/health``,
#: ``/metrics``, and ``other`` for any other path.
RANK_ROUTES = tuple(path for path, _ in MOUNTED)
ROUTES = (*RANK_ROUTES, "/health", "/metrics", "other")
#: Why a request was refused (``milvus_rerank_rejected_total{reason}``).
REASONS = (
    "invalid",  # 400 (TEI 422): a body, option, query or document this server refuses
    "too_large",  # 413: a body past max_body_bytes, a TEI text past the cap with truncate=false
    "too_many_documents",  # 422: more than max_documents
    "timeout",  # 408: the body did not arrive within body_timeout
    "unauthorized",  # 401: no key, or a wrong one
    "origin",  # 415, 421: what a keyless server refuses from web pages
    "overloaded",  # 429: max_pending_pairs or max_concurrent_requests
    "rate_limited",  # 429: the upstream API's rate limit
    "draining",  # 503: the server is stopping (docs/serve.md, "Starting and stopping")
    "unavailable",  # 503: the upstream API is unavailable
)
_BY_STATUS = {
    400: "invalid",
    401: "unauthorized",
    408: "timeout",
    413: "too_large",
    415: "origin",
    421: "origin",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}
#: Seconds: a rerank takes milliseconds (a few pairs) to a minute (a thousand long documents
#: on a CPU).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Pairs (rows) in one forward pass, or one whole request to an API.
PAIRS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def route_label(scope: MutableMapping[str, Any]) -> str:
    """The route label of an ASGI request: its path under the app's root, else ``other``."""
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and isinstance(path, str) and path.startswith(root):
        path = path[len(root) :]
    return path if path in ROUTES and path != "other" else "other"


def reason_for(status: int, reason: str | None = None) -> str | None:
    """The refusal reason of an answer: ``reason`` when given, else the status's; None: none."""
    if reason is not None:
        return reason if reason in REASONS else None
    return _BY_STATUS.get(status)


class ServeMetrics:
    """One app's metrics, in a registry of its own (two apps in one process never collide).

    The gauges read their values when scraped: ``queue`` (rows waiting for the model) and
    ``inflight`` (rank requests being answered).

    Raises:
        MissingDependencyError: ``prometheus-client`` is not installed (the ``serve`` extra).
    """

    def __init__(self, queue: Callable[[], float], inflight: Callable[[], float]) -> None:
        try:
            from prometheus_client import (
                CollectorRegistry,
                Counter,
                Gauge,
                Histogram,
                ProcessCollector,
            )
        except ImportError as exc:
            raise MissingDependencyError(
                "The rerank server's metrics", "serve", "prometheus-client"
            ) from exc
        self.registry: CollectorRegistry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)
        self.requests = Counter(
            "milvus_rerank_requests",
            "HTTP requests answered, by route (path template, or other) and status code",
            ["route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "milvus_rerank_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer, by route",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.pairs = Counter(
            "milvus_rerank_pairs", "(query, document) pairs scored and answered", registry=registry
        )
        self.tokens = Counter(
            "milvus_rerank_tokens",
            "Tokens those pairs read, as the reranker counted them (none where it counts none)",
            registry=registry,
        )
        self.queue = Gauge(
            "milvus_rerank_queue_pairs",
            "Rows (pairs, or windows of long documents) waiting to be scored",
            registry=registry,
        )
        self.queue.set_function(queue)
        self.inflight = Gauge(
            "milvus_rerank_inflight_requests",
            "Rank requests received and not yet answered",
            registry=registry,
        )
        self.inflight.set_function(inflight)
        self.batch_pairs = Histogram(
            "milvus_rerank_batch_pairs",
            "Rows in each micro-batch handed to the model (a whole request, for an API)",
            buckets=PAIRS_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "milvus_rerank_rejected",
            "Requests refused, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in REASONS:  # every series exists from the start, at 0
            self.rejected.labels(reason=reason)

    def answered(self, route: str, status: int, seconds: float) -> None:
        """Count one answer of ``route`` (a label of ``ROUTES``)."""
        self.requests.labels(route=route, status=str(status)).inc()
        self.duration.labels(route=route).observe(seconds)

    def refused(self, status: int, reason: str | None = None) -> None:
        """Count a refusal by its reason (a 500 or 502, a failure, is none)."""
        label = reason_for(status, reason)
        if label is not None:
            self.rejected.labels(reason=label).inc()

    def scored(self, pairs: int, usage: Usage | None) -> None:
        """Count a ranking answered: its pairs, and its tokens where they were counted."""
        self.pairs.inc(pairs)
        if usage is not None and usage.tokens is not None and usage.tokens > 0:
            self.tokens.inc(usage.tokens)

    def batch(self, rows: int) -> None:
        """Count one micro-batch of ``rows`` handed to the model."""
        self.batch_pairs.observe(rows)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


class MetricsMiddleware:
    """Counts every HTTP answer of the app it wraps: route, status, seconds to the last byte.

    A request that ends without an answer (an exception) counts as 500; a client gone before
    its answer counts as the 499 ``serve`` answers it.
    """

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        """Pass the request on, counting its answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def counted(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.answered(route_label(scope), status, time.perf_counter() - started)
