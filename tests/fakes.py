"""A real loopback HTTP server that speaks every provider's rerank format and injects faults.

The app is plain ASGI under uvicorn. Scores are a deterministic function of the query and
document (word overlap, ties broken by length), so tests know the exact expected ranking.

One server runs for the whole session (``fault_server``, re-exported by the conftests that
use it); each test that injects faults installs a fresh ``FaultPlan`` with ``fault_plan``.
``api_reranker`` builds any API reranker aimed at it, retrying fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from milvus_rerank import HTTPReranker, Reranker, RetryPolicy
from milvus_rerank.app.serve.testing import BackgroundServer
from tests.providers.api.specs import (
    SPECS,
    answer_items,
    request_documents,
    request_query,
    score_key,
)

#: Retries as the default policy does, with waits of milliseconds.
FAST_RETRY = RetryPolicy(backoff_base=0.001, backoff_max=0.01)
#: Where each API's versioned routes sit under the fake server's root.
ROOTS = {"cohere": "/v2", "voyage": "/v1", "jina": "/v1"}

# A fault is one of:
#   "ok", "503", "500", "502", "408", "409", "400", "401", "403", "404", "422",
#   "429" (Retry-After: retry_after), "slow" (sleep slow_seconds first), "reset" (headers,
#   then the connection closes mid-body), "truncated" (a 200 whose JSON stops halfway),
#   "html" (a 200 HTML page), "gzip_garbage", "out_of_range", "duplicate", "missing",
#   "nan_score", "string_score", "bool_index", "float_index", "not_a_list"
Fault = str


def fake_score(query: str, document: str) -> float:
    """Word overlap with the query, ties broken towards shorter documents."""
    q = set(query.lower().split())
    return len(q & set(document.lower().split())) + 1.0 / (2.0 + len(document))


@dataclass
class FaultPlan:
    """What the server does to each request: a fixed script first, then random draws."""

    script: list[Fault] = field(default_factory=list)
    weights: dict[Fault, float] = field(default_factory=dict)
    retry_after: str = "0"
    slow_seconds: float = 0.2
    latency: float = 0.0
    seed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    disconnects: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def reseed(self, seed: int) -> None:
        """Restart the random draws from ``seed``."""
        self.seed = seed
        self._rng = random.Random(seed)

    def next(self) -> Fault:
        with self._lock:
            if self.script:
                fault = self.script.pop(0)
            elif self.weights:
                faults = list(self.weights) + ["ok"]
                rest = max(0.0, 1.0 - sum(self.weights.values()))
                fault = self._rng.choices(faults, [*self.weights.values(), rest])[0]
            else:
                fault = "ok"
            self.counts[fault] += 1
            return fault


def _shape(path: str, body: dict[str, Any], order: list[tuple[int, float]]) -> Any:
    """The answer in the format the path and body call for."""
    own = {SPECS[name].path: name for name in ("mixedbread", "dashscope")}
    own["/v1/ranking"] = "nvidia"  # a self-hosted NIM's route
    if path in own:
        return SPECS[own[path]].answer(order)
    if isinstance(body.get("documents", [None])[0], dict):  # Pinecone
        return SPECS["pinecone"].answer(order)
    if "texts" in body:  # TEI
        return [{"index": i, "score": s} for i, s in order]
    if path.endswith("/v2/rerank") and "model" in body and "top_k" not in body:
        return {
            "id": "fake-rerank-id",
            "results": [{"index": i, "relevance_score": s} for i, s in order],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        }
    if "top_k" in body:  # Voyage
        return {
            "object": "list",
            "data": [{"index": i, "relevance_score": s} for i, s in order],
            "model": body.get("model"),
            "usage": {"total_tokens": 10},
        }
    return {  # Jina and vLLM
        "model": body.get("model", "fake"),
        "usage": {"total_tokens": 10},
        "results": [{"index": i, "relevance_score": s} for i, s in order],
    }


def _corrupt(fault: Fault, answer: Any) -> Any:
    items = answer_items(answer)
    key = score_key(items[0])
    if fault == "out_of_range":
        items[0]["index"] = len(items) + 5
    elif fault == "duplicate" and len(items) > 1:
        items[1]["index"] = items[0]["index"]
    elif fault == "missing":
        items.pop()
    elif fault == "nan_score":
        items[0][key] = float("nan")
    elif fault == "string_score":
        items[0][key] = "0.9"
    elif fault == "bool_index":
        items[0]["index"] = True
    elif fault == "float_index":
        items[0]["index"] = 0.0
    elif fault == "not_a_list":
        return {"results": "nope"} if not isinstance(answer, list) else {"oops": 1}
    return answer


#: Well-formed JSON answers that lie (see ``_corrupt``).
CORRUPTIONS = (
    "out_of_range",
    "duplicate",
    "missing",
    "nan_score",
    "string_score",
    "bool_index",
    "float_index",
    "not_a_list",
)


class _Disconnected(Exception):
    """The client closed the connection before the answer."""


def make_app(
    plan: FaultPlan | Callable[[], FaultPlan], score: Callable[[str, str], float] = fake_score
) -> Any:
    """The ASGI app: every rerank route, faults drawn from ``plan`` (or the plan it returns)."""
    current = plan if callable(plan) else lambda: plan

    async def send_json(
        send: Any, status: int, payload: Any, headers: list[Any] | None = None
    ) -> None:
        raw = json.dumps(payload, allow_nan=True).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *(headers or [])],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = json.loads(await read_body(receive) or b"{}")
        plan = current()  # one plan for the whole request, even if a test installs a new one
        with plan._lock:
            plan.requests.append(body)
            plan.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
            plan.in_flight += 1
            plan.max_in_flight = max(plan.max_in_flight, plan.in_flight)
        try:
            await _respond(plan, scope, body, receive, send)
        except _Disconnected:
            with plan._lock:
                plan.disconnects += 1
        finally:
            with plan._lock:
                plan.in_flight -= 1

    async def pause(seconds: float, receive: Any) -> None:
        """Sleep, unless the client goes away first (then stop like a real server would)."""
        waiter = asyncio.ensure_future(receive())
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
        if done and waiter.result().get("type") == "http.disconnect":
            raise _Disconnected
        waiter.cancel()

    async def _respond(
        plan: FaultPlan, scope: dict[str, Any], body: dict[str, Any], receive: Any, send: Any
    ) -> None:
        fault = plan.next()
        if plan.latency:
            await pause(plan.latency, receive)
        if fault == "slow":
            await pause(plan.slow_seconds, receive)
        docs = request_documents(body)
        query = request_query(body)
        order = sorted(
            ((i, score(query, d)) for i, d in enumerate(docs)),
            key=lambda p: -p[1],
        )
        if fault.isdigit():
            status = int(fault)
            headers = [(b"retry-after", plan.retry_after.encode())] if status == 429 else []
            headers.append((b"x-request-id", b"req-fault-1"))
            await send_json(
                send, status, {"message": f"injected {status}", "detail": "fault"}, headers
            )
            return
        answer = _shape(scope["path"], body, order)
        if fault in CORRUPTIONS:
            await send_json(send, 200, _corrupt(fault, answer))
        elif fault == "html":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/html")],
                }
            )
            await send({"type": "http.response.body", "body": b"<html><body>Gateway</body></html>"})
        elif fault == "gzip_garbage":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-encoding", b"gzip"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"\x1f\x8b\x08\x00garbage!"})
        elif fault == "truncated":
            raw = json.dumps(answer).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": raw[: len(raw) // 2]})
        elif fault == "reset":
            raw = json.dumps(answer).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(raw)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": raw[:5], "more_body": True})
            raise ConnectionResetError("injected reset")
        else:
            await send_json(send, 200, answer)

    return app


async def read_body(receive: Any) -> bytes:
    """An ASGI request's whole body, however many messages it came in."""
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            return raw


class FaultServer:
    """The session's loopback fault server; ``plan`` is what it does to each request now."""

    def __init__(self) -> None:
        self.plan = FaultPlan()
        self._server = BackgroundServer(make_app(lambda: self.plan))

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    def fresh_plan(self) -> FaultPlan:
        """Install and return a new, fault-free plan with empty counters."""
        self.plan = FaultPlan()
        return self.plan


_shared: FaultServer | None = None
_users = 0


@contextlib.contextmanager
def _shared_fault_server() -> Iterator[FaultServer]:
    """The one fault server of this process, started on first use, stopped after the last."""
    global _shared, _users
    if _shared is None:
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # injected resets log
        _shared = FaultServer()
        _shared._server.start()
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0:
            _shared._server.stop()
            _shared = None


@pytest.fixture(scope="session")
def fault_server() -> Iterator[FaultServer]:
    """The session's fault server (one per process, however many conftests re-export it)."""
    with _shared_fault_server() as server:
        yield server


@pytest.fixture
def fault_plan(fault_server: FaultServer) -> Iterator[FaultPlan]:
    """A fresh plan on the shared server for this test; fault-free again afterwards."""
    yield fault_server.fresh_plan()
    fault_server.fresh_plan()


def api_reranker(provider: str, url: str, **kwargs: Any) -> HTTPReranker:
    """The ``provider``'s reranker aimed at the fake server root ``url``, retrying fast."""
    spec = SPECS[provider]
    options = {
        **spec.kwargs,
        "api_key": "test-key",
        "base_url": url + ROOTS.get(provider, ""),
        "retry": FAST_RETRY,
        **kwargs,
    }
    return spec.cls(**options)


def fast_retry(**changes: Any) -> RetryPolicy:
    """``FAST_RETRY`` with some fields changed."""
    return dataclasses.replace(FAST_RETRY, **changes)


class Failing(Reranker):
    """Every scoring raises ``error`` (an upstream that is down, rate limited or broken)."""

    provider = "failing"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        raise self.error

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        raise self.error
