"""The HTTP layer against misbehaving loopback servers: secrets, deadlines, leaks, bounds.

Every server here is real and listens on 127.0.0.1: uvicorn (``BackgroundServer``) for
answers an ASGI app can give, a raw socket server for byte-level misbehaviour (trickled
headers and bodies). Every loop is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import gzip
import html
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest

from milvus_rerank import (
    AuthenticationError,
    CohereReranker,
    ConfigurationError,
    DashScopeReranker,
    InvalidResponseError,
    JinaReranker,
    NVIDIAReranker,
    PineconeReranker,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    RetryPolicy,
    TEIReranker,
    VLLMReranker,
    VoyageReranker,
)
from milvus_rerank.app.serve.testing import BackgroundServer
from tests.fakes import FaultPlan, FaultServer, fake_score
from tests.providers.api.specs import SPECS

KEY = "sk-live-7Qz3" + "Xy9Lm2Np8Rt4Vw6" * 2
QUERY = "what is milvus"
DOCS = ["milvus is a vector database", "paris is in france", "milvus"]
FAST = RetryPolicy(backoff_base=0.001, backoff_max=0.01)

# -- servers ---------------------------------------------------------------------------------

Reply = tuple[int, list[tuple[bytes, bytes]], "bytes | list[bytes]"]
Handler = Callable[[dict[str, Any], dict[str, str]], Awaitable[Reply]]

#: Was in tests/reliability/, outside the unit tier: load, faults, servers.
pytestmark = pytest.mark.slow


def ranked(body: dict[str, Any]) -> dict[str, Any]:
    docs = body.get("documents", [])
    scores = [fake_score(body.get("query", ""), d) for d in docs]
    return {"results": [{"index": i, "relevance_score": s} for i, s in enumerate(scores)]}


def order(docs: list[str]) -> list[int]:
    return sorted(range(len(docs)), key=lambda i: (-fake_score(QUERY, docs[i]), i))


def as_json(payload: Any, status: int = 200, **headers: str) -> Reply:
    extra = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return status, [(b"content-type", b"application/json"), *extra], json.dumps(payload).encode()


@contextlib.contextmanager
def asgi(handler: Handler) -> Iterator[BackgroundServer]:
    """A uvicorn server whose every request is answered by ``handler(body, headers)``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        status, head, body = await handler(json.loads(raw or b"{}"), headers)
        await send({"type": "http.response.start", "status": status, "headers": head})
        parts = body if isinstance(body, list) else [body]
        for i, part in enumerate(parts):
            more = i < len(parts) - 1
            await send({"type": "http.response.body", "body": part, "more_body": more})

    server = BackgroundServer(app)
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # injected misbehaviour
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RawServer:
    """A raw TCP server on 127.0.0.1: ``serve(conn)`` runs per connection in a thread."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self._serve = serve
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                read_request(conn)
                self._serve(conn)
            except OSError:
                pass  # the client went away: what the test wanted

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 1 << 20:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return body


def trickle(data: bytes, every: float = 0.25, limit: int = 120) -> Callable[[socket.socket], None]:
    """Send ``data`` then a byte every ``every`` s (at most ``limit`` bytes, about 30 s)."""

    def serve(conn: socket.socket) -> None:
        conn.sendall(data)
        for _ in range(limit):
            time.sleep(every)
            conn.sendall(b" ")

    return serve


TRICKLED_HEADERS = b"HTTP/1.1 200 OK\r\nX-Slow:"
TRICKLED_BODY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 999\r\n\r\n{"


def key_parts_in(text: str) -> list[str]:
    """Every 8-character window of KEY found in ``text`` (a key cut in half still leaks)."""
    return [KEY[i : i + 8] for i in range(len(KEY) - 7) if KEY[i : i + 8] in text]


def texts_of(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))] + [
        str(getattr(exc, "request_id", None))
    ]


async def call(reranker: VLLMReranker, mode: str, docs: list[str] = DOCS) -> Any:
    if mode == "async":
        return await reranker.arerank(QUERY, docs)
    return await asyncio.to_thread(reranker.rerank, QUERY, docs)


MODES = ["sync", "async"]

# -- 1, 2, 12: server text is scrubbed, then clipped ------------------------------------------

ECHOES: dict[str, Reply] = {
    "200 error field": as_json({"error": f"invalid token Bearer {KEY}"}),
    "200 score holds the key": as_json({"results": [{"index": 0, "relevance_score": KEY}]}),
    "200 index holds the key": as_json({"results": [{"index": f"x {KEY}", "relevance_score": 1}]}),
    "200 results hold the key": as_json({"results": {"token": "." * 40 + KEY}}),
    "200 plain text": (200, [(b"content-type", b"text/plain")], f"bad token {KEY}".encode()),
    "200 JSON-escaped key": (
        200,
        [(b"content-type", b"application/json")],
        b'{"error": "' + KEY.replace("-", "\\u002d").encode() + b'"}',
    ),
    "401 message": as_json({"message": f"invalid api token {KEY}"}, 401),
    "400 text, key across the old 200-char cut": (
        400,
        [(b"content-type", b"text/plain")],
        ("x" * 190 + KEY).encode(),
    ),
    "500 detail, key across the 300-char cut": as_json({"detail": "y " * 140 + KEY}, 500),
    "503 request id echoes the key": as_json({"message": "busy"}, 503, x_request_id=KEY),
    "422 nested detail": as_json({"detail": [{"msg": f"token {KEY} refused", "loc": ["h"]}]}, 422),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(ECHOES))
async def test_an_echoed_key_is_in_no_error(case: str, mode: str) -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        assert headers["authorization"] == f"Bearer {KEY}"
        return ECHOES[case]

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, api_key=KEY, retry=RetryPolicy(max_retries=0))
        with pytest.raises(ProviderError) as info:
            await call(reranker, mode)
        await reranker.aclose()
    for text in texts_of(info.value):
        assert key_parts_in(text) == []
    assert len(str(info.value)) <= 1000


@pytest.mark.parametrize("mode", MODES)
async def test_huge_and_overflowing_answers_are_bounded_typed_errors(mode: str) -> None:
    replies = [
        as_json({"message": "m" * 5_000_000}, 500),
        as_json({"results": [{"index": 0, "relevance_score": 10**400}]}),
        # 30,000 deep: past the parser's recursion limit, under the 64 KiB shape check
        (200, [(b"content-type", b"application/json")], b"[" * 30_000 + b"]" * 30_000),
    ]

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return replies.pop(0)

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, retry=RetryPolicy(max_retries=0))
        with pytest.raises(ProviderUnavailableError) as huge:
            await call(reranker, mode, ["d"])
        with pytest.raises(InvalidResponseError, match="not finite"):
            await call(reranker, mode, ["d"])
        with pytest.raises(InvalidResponseError, match="not JSON"):
            await call(reranker, mode, ["d"])
        await reranker.aclose()
    assert len(str(huge.value)) < 500


# -- 3, 14: base_url holds no credentials, query or fragment ----------------------------------

BAD_ROOTS = [
    "http://user:hunter2-secret@127.0.0.1:8000",
    "https://:hunter2-secret@api.example.com/v1",
    "http://hunter2-secret@127.0.0.1:8000",
    "ftp://user:hunter2-secret@127.0.0.1",
    "http://127.0.0.1:8000/?api_key=hunter2-secret",
    "http://127.0.0.1:8000/v1#hunter2-secret",
    "http://127.0.0.1:8000?",
]


@pytest.mark.parametrize("provider", sorted(SPECS))
@pytest.mark.parametrize("root", BAD_ROOTS)
def test_base_url_with_credentials_query_or_fragment_is_refused(provider: str, root: str) -> None:
    with pytest.raises(ConfigurationError, match="base_url") as info:
        SPECS[provider].cls(base_url=root, api_key=KEY)
    assert "hunter2" not in str(info.value)
    if "@" in root:
        assert "api_key" in str(info.value) and "headers" in str(info.value)


# -- 4: keys are checked once, at construction, and never shown -------------------------------

BAD_KEYS = {
    "newline inside": "sk-abcd\nefgh-12345678",
    "space inside": "sk-abcd efgh-12345678",
    "non-ASCII": "sk-clé-secrète-12345678",
    "control character": "sk-abcd\x7fefgh-1234",
    "blank": "   \t ",
    "too short": "sk-1",
}


@pytest.mark.parametrize("name", sorted(BAD_KEYS))
def test_bad_keys_are_configuration_errors_that_never_show_them(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = BAD_KEYS[name]
    with pytest.raises(ConfigurationError, match="from api_key") as info:
        JinaReranker(api_key=key)
    assert key.strip() not in str(info.value) or not key.strip()
    monkeypatch.setenv("JINA_API_KEY", key)
    with pytest.raises(ConfigurationError, match="JINA_API_KEY") as info:
        JinaReranker()
    assert key.strip() not in str(info.value) or not key.strip()


def test_a_pasted_key_is_stripped_and_sent_clean() -> None:
    headers: list[str] = []
    with asgi(ok_handler(headers)) as server:
        reranker = VLLMReranker(base_url=server.url, api_key=f"  {KEY}\n")
        reranker.rerank(QUERY, DOCS)
        reranker.close()
    assert headers == [f"Bearer {KEY}"]


def ok_handler(seen: list[str] | None = None, delay: float = 0.0) -> Handler:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if seen is not None:
            seen.append(headers.get("authorization", ""))
        if delay:
            await asyncio.sleep(delay)
        return as_json(ranked(body))

    return handler


@pytest.mark.parametrize(
    "headers",
    [{"X-Api-Key": "abc\r\nX-Injected: 1"}, {"X-Token": "clé-secrète-1234"}, {"Bad Name": "v"}],
)
def test_bad_extra_headers_are_refused_without_their_value(headers: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="header") as info:
        VLLMReranker(base_url="http://127.0.0.1:9", headers=headers)
    assert "Injected" not in str(info.value) and "secrète" not in str(info.value)


@pytest.mark.parametrize(
    "name",
    ["Content-Length", "transfer-encoding", "Connection", "Keep-Alive", "Upgrade", "TE"]
    + ["Trailer", "Expect", "Proxy-Connection"],
)
def test_headers_that_frame_the_request_are_refused(name: str) -> None:
    # Attack F4: before, Content-Length failed every call with a raw h11 LocalProtocolError,
    # and Transfer-Encoding put both it and Content-Length on the wire.
    with pytest.raises(ConfigurationError, match=f"headers may not set '{name}'") as info:
        VLLMReranker(base_url="http://127.0.0.1:9", headers={name: "chunked-1234567"})
    assert "chunked-1234567" not in str(info.value)


@pytest.mark.parametrize("mode", MODES)
async def test_a_host_header_reaches_the_server_for_virtual_hosting(mode: str) -> None:
    seen: list[str] = []

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        seen.append(headers["host"])
        scores = [{"index": i, "relevance_score": 0.5} for i in range(len(body["documents"]))]
        return as_json({"results": scores})

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, headers={"Host": "rerank.internal"})
        await call(reranker, mode)
        await reranker.aclose()
    assert seen == ["rerank.internal"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_secret_extra_header_is_kept_secret(mode: str) -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return as_json({"message": f"bad x-api-key {headers['x-api-key']}"}, 403)

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, headers={"X-Api-Key": KEY})
        with pytest.raises(ProviderError) as info:
            await call(reranker, mode)
        await reranker.aclose()
    for text in [*texts_of(info.value), repr(vars(reranker)), repr(reranker)]:
        assert key_parts_in(text) == []


# -- 6: the deadline holds whatever the server does -------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("opening", [TRICKLED_HEADERS, TRICKLED_BODY], ids=["headers", "body"])
async def test_deadline_holds_against_a_trickling_server(mode: str, opening: bytes) -> None:
    with RawServer(trickle(opening)) as server:
        reranker = VLLMReranker(base_url=server.url, retry=RetryPolicy(deadline=2.0))
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match="deadline"):
            await call(reranker, mode)
        took = time.monotonic() - started
        await reranker.aclose()
    print(f"\ntrickled {mode}: ended after {took:.2f}s with deadline=2")
    assert 1.9 <= took < 3.0


def test_deadline_holds_for_a_trickled_body_over_an_injected_client() -> None:
    with RawServer(trickle(TRICKLED_BODY)) as server, httpx.Client() as client:
        reranker = VLLMReranker(
            base_url=server.url, retry=RetryPolicy(deadline=2.0), http_client=client
        )
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match="deadline"):
            reranker.rerank(QUERY, DOCS)
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("mode", MODES)
async def test_the_deadline_covers_waiting_for_a_request_slot(mode: str) -> None:
    with asgi(ok_handler(delay=1.5)) as server:
        reranker = VLLMReranker(
            base_url=server.url, max_concurrency=1, retry=RetryPolicy(deadline=1.0)
        )
        first = asyncio.create_task(call(reranker, mode))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match="deadline"):
            await call(reranker, mode)  # it waits for the slot, then has 0.3 s left
        assert time.monotonic() - started < 1.2  # ends at its own deadline, not at 1 + 1 s
        with pytest.raises(ProviderUnavailableError):
            await first
        await reranker.aclose()


async def test_a_huge_retry_after_is_not_waited_past_the_deadline() -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return as_json({"message": "slow down"}, 429, retry_after="100000000")

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, retry=RetryPolicy(deadline=2.0))
        started = time.monotonic()
        with pytest.raises(RateLimitError) as info:
            await reranker.arerank(QUERY, DOCS)
        await reranker.aclose()
    assert time.monotonic() - started < 0.5
    assert info.value.retry_after == 100000000


# -- 7: no client, socket or memory left behind ------------------------------------------------


def test_1000_asyncio_run_calls_leave_fds_and_memory_flat() -> None:
    process = psutil.Process()
    with asgi(ok_handler()) as server:
        reranker = VLLMReranker(base_url=server.url)

        def one() -> None:
            results = asyncio.run(reranker.arerank(QUERY, DOCS))
            assert [r.index for r in results] == order(DOCS)

        for _ in range(50):
            one()
        gc.collect()
        fds, rss = process.num_fds(), process.memory_info().rss
        started = time.monotonic()
        for _ in range(1000):
            one()
        took = time.monotonic() - started
        gc.collect()
        grown_fds = process.num_fds() - fds
        grown_rss = (process.memory_info().rss - rss) / 2**20
        states = len(reranker._clients.loops)
    print(
        f"\n1,000 asyncio.run(arerank): {took:.1f}s, open fds {grown_fds:+d}, "
        f"RSS {grown_rss:+.1f} MiB, per-loop states left {states}"
    )
    assert grown_fds <= 10
    assert grown_rss < 50
    assert states <= 1


def test_rerankers_dropped_without_close_release_their_sockets() -> None:
    process = psutil.Process()
    with asgi(ok_handler()) as server:
        VLLMReranker(base_url=server.url).rerank(QUERY, DOCS)  # the private loop runs
        gc.collect()
        fds = process.num_fds()
        for _ in range(200):
            VLLMReranker(base_url=server.url).rerank(QUERY, DOCS)
        gc.collect()
        for _ in range(50):  # closing is scheduled on the clients' loop: let it run
            if process.num_fds() <= fds + 10:
                break
            time.sleep(0.05)
        grown = process.num_fds() - fds
    assert grown <= 10


# -- 8: one bound on requests in flight per reranker ---------------------------------------


def test_max_concurrency_is_one_bound_over_threads_and_event_loops(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.latency = 0.1
    reranker = VLLMReranker(base_url=fault_server.url, max_concurrency=2, max_batch=1)
    outcomes: list[object] = []

    def sync_caller() -> None:
        outcomes.append(reranker.rerank(QUERY, DOCS))

    def loop_caller() -> None:
        async def many() -> list[object]:
            return list(await asyncio.gather(*(reranker.arerank(QUERY, DOCS) for _ in range(3))))

        outcomes.extend(asyncio.run(many()))

    threads = [threading.Thread(target=f) for f in (sync_caller, sync_caller, loop_caller) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    reranker.close()
    assert len(outcomes) == 10
    assert all([r.index for r in res] == order(DOCS) for res in outcomes)  # type: ignore[attr-defined]
    assert len(fault_plan.requests) == 30
    assert fault_plan.max_in_flight == 2


# -- 9: closing during a call ends it cleanly -------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_closing_during_a_call_ends_it_with_a_result_or_a_typed_error(
    mode: str, fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.script = ["503", "503"]
    fault_plan.latency = 0.3
    reranker = VLLMReranker(
        base_url=fault_server.url, retry=RetryPolicy(backoff_base=0.2, backoff_max=0.2)
    )
    task = asyncio.create_task(call(reranker, mode))
    await asyncio.sleep(0.1)
    if mode == "sync":
        reranker.close()
    else:
        await reranker.aclose()
    try:
        outcome: object = await asyncio.wait_for(task, 10)
    except ProviderError as exc:
        outcome = exc
        assert "closed during the call" in str(exc)
    assert isinstance(outcome, (list, ProviderError))
    reranker.close()


# -- 10: a failing chunk ends the call at once, sync and async --------------------------------


@pytest.mark.parametrize("client", ["own", "injected"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_failing_chunk_fails_the_call_at_once(mode: str, client: str) -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if any("fail" in d for d in body["documents"]):
            return as_json({"message": "bad chunk"}, 400)
        await asyncio.sleep(2)
        return as_json(ranked(body))

    docs = ["fail"] + [f"slow {i}" for i in range(5)]
    with asgi(handler) as server:
        injected: dict[str, Any] = {}
        if client == "injected":
            injected = {"http_client": httpx.Client(), "http_async_client": httpx.AsyncClient()}
        reranker = VLLMReranker(base_url=server.url, max_batch=1, **injected)
        started = time.monotonic()
        with pytest.raises(ProviderError, match="HTTP 400"):
            await call(reranker, mode, docs)
        took = time.monotonic() - started
        await reranker.aclose()
        for c in injected.values():
            await c.aclose() if isinstance(c, httpx.AsyncClient) else c.close()
    assert took < 1.0


@pytest.mark.parametrize("mode", MODES)
async def test_a_failed_call_sends_nothing_more(mode: str) -> None:
    # Attack F2 (Python 3.11): the chunk waiting for a slot got the failing chunk's slot in the
    # loop turn the call cancelled it, and asyncio.wait_for lost the cancellation: it went on
    # sending and retrying a 503 after the call had failed (before: 2.2 s, 5 requests).
    seen: list[str] = []

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        seen.append(body["documents"][0])
        if body["documents"] == ["fail"]:
            await asyncio.sleep(0.2)  # the other chunk is waiting out its Retry-After by then
            return as_json({"message": "bad chunk"}, 400)
        return as_json({"message": "busy"}, 503, retry_after="1")

    with asgi(handler) as server:
        reranker = VLLMReranker(
            base_url=server.url,
            max_batch=1,
            max_concurrency=2,
            retry=RetryPolicy(max_retries=2, deadline=10),
        )
        started = time.monotonic()
        with pytest.raises(ProviderError, match="HTTP 400"):
            await call(reranker, mode, ["fail", "busy 1", "busy 2"])
        took = time.monotonic() - started
        await asyncio.sleep(1.2)  # a retry still going would have been sent by now
        await reranker.aclose()
    assert took < 0.8
    assert sorted(seen) == ["busy 1", "fail"]


# -- 11: the answer's size is bounded, decoded --------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_answers_past_max_response_bytes_are_refused(mode: str) -> None:
    big = [b"x" * 65536] * 80  # 5 MiB, streamed with no Content-Length
    declared = (200, [(b"content-length", str(2**30).encode())], b"")
    replies: list[Reply] = [(200, [(b"content-type", b"application/json")], big), declared]

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return replies.pop(0)

    with asgi(handler) as server:
        reranker = VLLMReranker(
            base_url=server.url, max_response_bytes=2**20, retry=RetryPolicy(max_retries=0)
        )
        with pytest.raises(InvalidResponseError, match="max_response_bytes"):
            await call(reranker, mode)
        with pytest.raises(InvalidResponseError, match="declares"):  # refused before reading
            await call(reranker, mode)
        await reranker.aclose()


@pytest.mark.parametrize("mode", MODES)
async def test_a_gzip_bomb_stops_at_the_cap(mode: str) -> None:
    bomb = gzip.compress(b'{"results": [' + b" " * (200 * 2**20) + b"]}", compresslevel=9)
    assert len(bomb) < 400_000

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        head = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        return 200, head, bomb

    process = psutil.Process()
    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url)
        gc.collect()
        rss = process.memory_info().rss
        with pytest.raises(InvalidResponseError, match="max_response_bytes"):
            await call(reranker, mode)
        grown = (process.memory_info().rss - rss) / 2**20
        await reranker.aclose()
    assert grown < 200  # 200 MiB decoded would be there, and far more for a bigger bomb


# -- 13: proxy variables httpx cannot use ---------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ALL_PROXY", "socks5://user:hunter2-pw@127.0.0.1:1080"),
        ("HTTP_PROXY", "ftp://user:hunter2-pw@127.0.0.1:21"),
        ("https_proxy", "gopher://hunter2-pw@127.0.0.1"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
async def test_unusable_proxy_variables_are_named_not_shown(
    var: str, value: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if var == "ALL_PROXY":
        try:
            import socksio  # noqa: F401
        except ImportError:
            pass
        else:  # pragma: no cover - with socksio a SOCKS proxy is fine
            pytest.skip("socksio is installed")
    monkeypatch.setenv(var, value)
    reranker = VLLMReranker(base_url="http://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match=var) as info:
        await call(reranker, mode)
    assert "hunter2" not in str(info.value)


PROXY_PASSWORD = "proxyPassw0rd-4711"


@pytest.mark.parametrize("mode", MODES)
async def test_a_proxy_echoing_its_credentials_has_them_scrubbed(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Attack F8: a proxy's 407 echoing Proxy-Authorization put base64(user:password) in the
    # error; the proxy variables' credentials are now scrubbed as the key is.
    hits: list[bytes] = []

    def refuse(conn: socket.socket) -> None:
        hits.append(b"")
        echo = base64.b64encode(f"bob:{PROXY_PASSWORD}".encode())
        body = b'{"message": "denied for Proxy-Authorization: Basic ' + echo + b'"}'
        conn.sendall(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    with RawServer(refuse) as proxy:
        for var in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("//", f"//bob:{PROXY_PASSWORD}@"))
        reranker = VLLMReranker(base_url="http://10.254.0.9:8000", retry=RetryPolicy(max_retries=0))
        with pytest.raises(ProviderError, match="HTTP 407") as info:
            await call(reranker, mode)  # reaches 10.254.0.9 only through the loopback proxy
        await reranker.aclose()
    assert hits
    for text in texts_of(info.value):
        assert pieces_of(PROXY_PASSWORD, text) == [], text


# -- redirects are not followed, so the key goes nowhere else ---------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_redirect_to_another_host_is_not_followed(mode: str) -> None:
    elsewhere: list[str] = []
    with asgi(ok_handler(elsewhere)) as other:

        async def redirect(body: dict[str, Any], headers: dict[str, str]) -> Reply:
            location = (other.url + "/v1/rerank").encode()
            return 307, [(b"location", location)], b""

        with asgi(redirect) as server:
            reranker = VLLMReranker(base_url=server.url, api_key=KEY)
            with pytest.raises(ProviderError) as info:
                await call(reranker, mode)
            await reranker.aclose()
    assert info.value.status_code == 307
    assert elsewhere == []


# == the second outside attack (attack14b): what it found, each held now ======================

SLASHY = "sk-ab/cd+ef=gh0123456789LEAKxyz"  # a base64-style key: '/', '+', '='


def decoded_views(text: str) -> list[str]:
    """``text`` as given and as each encoding a server may echo a key in decodes it."""
    views = [text, urllib.parse.unquote(text), html.unescape(text)]
    views.append(re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text))
    for run in re.findall(r"[A-Za-z0-9+/=_-]{12,}", text):
        for skip in range(4):
            chunk = run[skip:]
            chunk = chunk[: len(chunk) // 4 * 4]
            with contextlib.suppress(ValueError):
                views.append(
                    base64.b64decode(chunk.replace("-", "+").replace("_", "/")).decode("latin-1")
                )
    for run in re.findall(r"[A-Za-z2-7]{16,}", text):
        for skip in range(8):
            chunk = run[skip:].upper()
            with contextlib.suppress(ValueError):
                views.append(base64.b32decode(chunk[: len(chunk) // 8 * 8]).decode("latin-1"))
    for run in re.findall(r"[0-9a-fA-F]{16,}", text):
        for skip in range(4):
            data = bytes.fromhex(run[skip:][: len(run[skip:]) // 4 * 4])
            views += [data.decode(codec, "replace") for codec in ("latin-1", "utf-16-le")]
            views.append(data.decode("utf-16-be", "replace"))
    return views


def pieces_of(key: str, text: str) -> list[str]:
    """Every 8-character window of ``key`` in ``text`` or a decoding of it, in any case."""
    low = "\n".join(decoded_views(text)).lower()
    return [key[i : i + 8] for i in range(len(key) - 7) if key[i : i + 8].lower() in low]


def raw_reply(status: int, body: bytes, *headers: tuple[bytes, bytes]) -> Reply:
    return status, [(b"content-type", b"text/plain"), *headers], body


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- F2, F3, F4: any 8-character piece of the key, in any spelling a server echoes ----------

SPELLED: dict[str, Reply] = {
    "a prefix of the key": as_json({"message": f"invalid api key {SLASHY[:20]}..."}, 401),
    "the key past 64 KiB of spaces (cut mid-key)": raw_reply(
        401, (" " * 65_509 + f"Bearer {SLASHY} rejected").encode()
    ),
    "quote() keeping '/'": as_json({"message": "bad key " + urllib.parse.quote(SLASHY)}, 401),
    "lower-case percent-encoding": as_json(
        {"message": "bad " + urllib.parse.quote(SLASHY, safe="").lower()}, 401
    ),
    "PHP-escaped slashes, not JSON": raw_reply(
        401, ('{"message": "bad key ' + SLASHY.replace("/", "\\/") + '" trailing').encode()
    ),
    "base64 of the key": as_json({"message": "bad key " + _b64(SLASHY)}, 401),
    "Basic base64(user:key)": as_json(
        {"message": "Authorization: Basic " + _b64(f"api:{SLASHY}")}, 401
    ),
    "\\u escapes in a body cut at 64 KiB": raw_reply(
        401,
        ('{"message": "bad key ' + "".join(f"\\u{ord(c):04x}" for c in SLASHY) + '"').encode()
        + b" " * 70_000
        + b"}",
    ),
    "the key split between detail and request id": as_json(
        {"message": "bad key " + SLASHY[:14]}, 401, x_request_id=SLASHY[14:]
    ),
    "HTML entities": as_json({"message": "bad " + "".join(f"&#{ord(c)};" for c in SLASHY)}, 403),
    # attack F1: the spellings that went through before
    "base32 inside a longer text": as_json(
        {"message": "t=" + base64.b32encode(f"key:{SLASHY}".encode()).decode()}, 401
    ),
    "hex of UTF-16": as_json(
        {"message": "k=" + SLASHY.encode("utf-16-le").hex() + SLASHY.encode("utf-16-be").hex()},
        401,
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(SPELLED))
async def test_no_piece_of_the_key_survives_in_any_spelling(case: str, mode: str) -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return SPELLED[case]

    with asgi(handler) as server:
        reranker = VLLMReranker(
            base_url=server.url, api_key=SLASHY, retry=RetryPolicy(max_retries=0)
        )
        with pytest.raises(ProviderError) as info:
            await call(reranker, mode)
        await reranker.aclose()
    for text in texts_of(info.value):
        assert pieces_of(SLASHY, text) == [], text[:300]
    assert len(str(info.value)) <= 1000


def test_scrubbing_a_64_kib_body_stays_fast() -> None:
    reranker = VLLMReranker(base_url="http://127.0.0.1:9", api_key=SLASHY)
    text = (SLASHY[:9] + "x" * 1000) * 64
    started = time.perf_counter()
    for _ in range(10):
        scrubbed = reranker._text.safe(text, 1000)
    took = (time.perf_counter() - started) / 10
    print(f"\nscrubbing 64 KiB of server text: {took * 1000:.1f} ms")
    assert pieces_of(SLASHY, scrubbed) == []
    assert took < 0.25


# -- F5: no public error keeps a context that reaches the key or the raw answer --------------


def chain_of(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def reachable_text(exc: BaseException) -> str:
    """What code walking the error chain's attributes can read (request headers, ``doc``)."""
    out = []
    for link in chain_of(exc):
        out += [repr(link), repr(vars(link)), str(getattr(link, "doc", ""))]
        request = getattr(link, "_request", None)
        if request is not None:
            out.append(repr(dict(request.headers)))
    return "\n".join(out)


@pytest.mark.parametrize("mode", MODES)
async def test_errors_keep_no_context_holding_the_request_or_the_raw_answer(mode: str) -> None:
    page = f"<html>Bearer {KEY}</html>".encode()
    replies: list[Reply] = [(200, [(b"content-type", b"text/html")], page)]

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if replies:
            return replies.pop(0)
        await asyncio.sleep(0.5)
        return as_json(ranked(body))

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, api_key=KEY, retry=FAST)
        with pytest.raises(InvalidResponseError) as not_json:
            await call(reranker, mode)
        task = asyncio.create_task(call(reranker, mode))
        await asyncio.sleep(0.2)
        if mode == "sync":
            reranker.close()
        else:
            await reranker.aclose()
        with pytest.raises(ProviderUnavailableError) as closed:
            await task
        await reranker.aclose()
    with RawServer(lambda conn: conn.close()) as dropping:
        reranker = VLLMReranker(base_url=dropping.url, api_key=KEY, retry=FAST)
        with pytest.raises(ProviderUnavailableError) as dropped:
            await call(reranker, mode)
        await reranker.aclose()
    for error in (not_json.value, closed.value, dropped.value):
        assert chain_of(error) == [error]  # no __cause__, no __context__
        assert key_parts_in(reachable_text(error)) == []


# -- F6: decompression bombs are stopped while decoding -------------------------------------


def gzip_bomb(decoded: int, layers: int = 1) -> bytes:
    """``decoded`` zero bytes gzipped ``layers`` times, made in bounded memory."""
    import zlib

    data = b""
    for layer in range(layers):
        packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        if layer == 0:
            block = b"\0" * 2**20
            parts = [packer.compress(block) for _ in range(decoded // 2**20)]
        else:
            parts = [packer.compress(data)]
        data = b"".join([*parts, packer.flush()])
    return data


def zstd_bomb(decoded: int) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    packer = zstandard.ZstdCompressor(level=19).compressobj()
    block = b"\0" * 2**20
    return b"".join([*(packer.compress(block) for _ in range(decoded // 2**20)), packer.flush()])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("encoding", ["zstd", "gzip, gzip"])
async def test_zstd_and_stacked_gzip_bombs_are_refused_in_bounded_memory(
    encoding: str, mode: str
) -> None:
    bomb = zstd_bomb(2**30) if encoding == "zstd" else gzip_bomb(2**30, layers=2)
    assert len(bomb) < 100_000  # 1 GiB decoded
    accepted: list[str] = []

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        accepted.append(headers.get("accept-encoding", ""))
        head = [(b"content-type", b"application/json"), (b"content-encoding", encoding.encode())]
        return 200, head, bomb

    process = psutil.Process()
    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, retry=RetryPolicy(deadline=5))
        gc.collect()
        rss = process.memory_info().rss
        started = time.monotonic()
        with pytest.raises(InvalidResponseError, match="Content-Encoding"):
            await call(reranker, mode)
        took = time.monotonic() - started
        grown = (process.memory_info().rss - rss) / 2**20
        await reranker.aclose()
    print(f"\n{encoding} bomb ({len(bomb):,} B, 1 GiB decoded): RSS {grown:+.0f} MiB, {took:.2f}s")
    assert accepted == ["gzip, deflate"]
    assert grown < 100  # before: +2,054 MiB (gzip, gzip) and +2,061 MiB (zstd)
    assert took < 1.0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw deflate", "identity, gzip"])
async def test_compressed_answers_are_decoded(encoding: str, mode: str) -> None:
    import zlib

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        plain = json.dumps(ranked(body)).encode()
        wbits = {"deflate": zlib.MAX_WBITS, "raw deflate": -zlib.MAX_WBITS}.get(
            encoding, zlib.MAX_WBITS | 16
        )
        packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
        packed = packer.compress(plain) + packer.flush()
        name = "deflate" if "deflate" in encoding else encoding
        head = [(b"content-type", b"application/json"), (b"content-encoding", name.encode())]
        return 200, head, [packed[:7], packed[7:]]  # split mid-stream

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url)
        results = await call(reranker, mode)
        await reranker.aclose()
    assert [r.index for r in results] == order(DOCS)


# -- F30: the answer's size bounds what parsing it costs, off the shared loop ----------------


def empty_lists(size: int) -> bytes:
    count = (size - 20) // 3
    return b'{"results":[' + b"[]," * (count - 1) + b"[]]}"


@pytest.mark.parametrize("mode", MODES)
async def test_an_answer_of_millions_of_tiny_values_is_refused_before_parsing(mode: str) -> None:
    hostile = empty_lists(4 * 2**20 - 4096)  # under the 4 MiB default cap

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return 200, [(b"content-type", b"application/json")], hostile

    process = psutil.Process()
    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, max_batch=1, retry=FAST)
        gc.collect()
        rss = process.memory_info().rss
        started = time.monotonic()
        with pytest.raises(InvalidResponseError, match="JSON values for 1 documents"):
            await call(reranker, mode, ["a", "b", "c", "d"])  # 4 chunks at once
        took = time.monotonic() - started
        grown = (process.memory_info().rss - rss) / 2**20
        await reranker.aclose()
    print(f"\n4 x 4 MiB of '[],': RSS {grown:+.0f} MiB, {took:.2f}s")
    assert grown < 150  # before: 32 MiB answers, +880 MiB each; 4 MiB would parse to +110
    assert took < 2.0


@pytest.mark.parametrize("mode", MODES)
async def test_an_answer_echoing_long_documents_fits_past_the_default_cap(mode: str) -> None:
    docs = [f"document {i} " + "x" * 3000 for i in range(2000)]  # 6 MB sent, 6 MB echoed

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        results = [
            {"index": i, "relevance_score": 1 / (1 + i), "document": {"text": d}}
            for i, d in enumerate(body["documents"])
        ]
        return as_json({"results": results})

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url)
        results = await call(reranker, mode, docs)
        await reranker.aclose()
    assert [r.index for r in results] == list(range(2000))


def test_a_hostile_answer_does_not_stall_another_rerankers_sync_calls() -> None:
    hostile = empty_lists(4 * 2**20 - 4096)

    async def bad(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return 200, [(b"content-type", b"application/json")], hostile

    with asgi(bad) as bad_server, asgi(ok_handler()) as good_server:
        attacked = VLLMReranker(base_url=bad_server.url, retry=RetryPolicy(max_retries=0))
        healthy = VLLMReranker(base_url=good_server.url, retry=RetryPolicy(deadline=1.0))
        healthy.rerank(QUERY, DOCS)
        stop = threading.Event()

        def attack() -> None:
            while not stop.is_set():
                with contextlib.suppress(ProviderError):
                    attacked.rerank(QUERY, DOCS)

        attacker = threading.Thread(target=attack)
        attacker.start()
        times = []
        try:
            for _ in range(20):
                started = time.monotonic()
                healthy.rerank(QUERY, DOCS)
                times.append(time.monotonic() - started)
                time.sleep(0.02)
        finally:
            stop.set()
            attacker.join(30)
        attacked.close()
        healthy.close()
    print(f"\nhealthy sync calls beside a hostile one: max {max(times):.2f}s")
    assert max(times) < 1.0  # before: 7.7 s at deadline=1 (32 MiB answers)


# -- F7, F20: the retry policy's arithmetic ---------------------------------------------------


def test_backoff_does_not_overflow_for_huge_retry_counts() -> None:
    policy = RetryPolicy(max_retries=5000, backoff_base=0.01, backoff_max=0.05, deadline=300)
    assert policy.backoff(1024, rand=lambda: 0.0) == 0.05
    assert policy.backoff(10**9, rand=lambda: 0.0) == 0.05
    zero = RetryPolicy(max_retries=10**6, backoff_base=0, backoff_max=0, deadline=2)
    assert zero.backoff(10**6) == 0.0


@pytest.mark.parametrize("retry_after", ["0", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"])
async def test_a_zero_negative_or_past_retry_after_still_backs_off(retry_after: str) -> None:
    seen: list[float] = []

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        seen.append(time.monotonic())
        return as_json({"message": "busy"}, 503, retry_after=retry_after)

    policy = RetryPolicy(max_retries=2, backoff_base=0.2, backoff_max=0.2, jitter=0.5)
    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, retry=policy)
        with pytest.raises(ProviderUnavailableError):
            await reranker.arerank(QUERY, DOCS)
        await reranker.aclose()
    gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    assert len(gaps) == 2 and min(gaps) >= 0.09  # before: 3 requests within 0.01 s


# -- F8, F9, F10, F11: options that reached the wire unchecked -------------------------------


@pytest.mark.parametrize("port", ["0", "65536", "99999", "123456789012345678901"])
def test_a_port_out_of_range_is_refused_at_construction(port: str) -> None:
    with pytest.raises(ConfigurationError, match="port must be from 1 to 65535"):
        CohereReranker(api_key=KEY, base_url=f"http://127.0.0.1:{port}")


@pytest.mark.parametrize("version", ["2025-10\r\nX-Injected: 1", "2025\u201110", "", 2025])
def test_pinecone_api_version_must_fit_in_a_header(version: object) -> None:
    with pytest.raises(ConfigurationError, match="api_version"):
        PineconeReranker(api_key=KEY, api_version=version)  # type: ignore[arg-type]


async def test_headers_merge_case_insensitively_and_never_carry_two_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError, match="'authorization'") as info:
        CohereReranker(api_key=KEY, headers={"authorization": "Bearer OTHER-KEY-123"})
    assert KEY not in str(info.value) and "OTHER" not in str(info.value)
    with pytest.raises(ConfigurationError, match="twice"):
        VLLMReranker(base_url="http://127.0.0.1:9", headers={"X-A": "1", "x-a": "2"})
    with pytest.raises(ConfigurationError, match="(?i)accept-encoding"):
        VLLMReranker(base_url="http://127.0.0.1:9", headers={"accept-encoding": "br"})
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(list(scope["headers"]))
        while (await receive()).get("more_body"):
            pass
        body = json.dumps({"results": [{"index": 0, "relevance_score": 0.5}]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    server = BackgroundServer(app)
    server.start()
    try:
        monkeypatch.setenv("COHERE_API_KEY", KEY)
        own = CohereReranker(headers={"authorization": "Bearer caller-token-1"})
        assert own.api_key is None  # the caller's header wins; the variable is not read
        reranker = VLLMReranker(
            base_url=server.url,
            api_key=KEY,
            headers={"content-type": "application/json", "user-agent": "mine/1"},
        )
        await reranker.arerank(QUERY, ["d"])
        await reranker.aclose()
    finally:
        server.stop()
    names = [name.lower() for name, _ in seen[0]]
    assert len(names) == len(set(names))  # before: both Authorization headers went out
    assert (b"user-agent", b"mine/1") in seen[0]


def test_option_types_are_checked_before_anything_is_sent() -> None:
    for option in ({"raw_scores": "false"}, {"truncate": "no"}, {"raw_scores": 1}):
        with pytest.raises(ConfigurationError, match=next(iter(option))):
            TEIReranker(base_url="http://127.0.0.1:9", **option)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="truncation"):
        VoyageReranker(api_key=KEY, truncation="no")  # type: ignore[arg-type]
    for model in ("a/b?api_key=x#f", "a/b#frag", "a/%2e%2e/b", "a b"):
        with pytest.raises(ConfigurationError, match="model_name"):
            NVIDIAReranker(model, api_key=KEY)
    assert NVIDIAReranker("nv-rerank-qa-mistral-4b:1", api_key=KEY).url.endswith("/reranking")


# -- F1: a provider's key from the environment goes to that provider only ------------------

KEY_VARS = {name: spec.env for name, spec in SPECS.items() if spec.env}


@pytest.mark.parametrize("provider", sorted(KEY_VARS))
def test_an_environment_key_goes_to_the_providers_own_api_only(
    provider: str, monkeypatch: pytest.MonkeyPatch, fault_server: FaultServer, fault_plan: FaultPlan
) -> None:
    spec = SPECS[provider]
    var = KEY_VARS[provider]
    assert var is not None
    monkeypatch.setenv(var, KEY)
    assert spec.cls(**spec.kwargs).api_key is not None  # the public API: read
    options = {**spec.kwargs, "base_url": fault_server.url, "retry": FAST}
    if provider in ("cohere", "voyage", "jina"):
        options["base_url"] += {"cohere": "/v2", "voyage": "/v1", "jina": "/v1"}[provider]
    reranker = spec.cls(**options)
    assert reranker.api_key is None
    reranker.rerank(QUERY, DOCS)
    reranker.close()
    sent = fault_plan.headers[-1]
    assert "authorization" not in sent and "api-key" not in sent  # before: the key went there
    explicit = spec.cls(**{**options, "api_key": "other-key-123"})
    explicit.rerank(QUERY, DOCS)
    explicit.close()
    assert "other-key-123" in fault_plan.headers[-1][spec.auth_header]


def test_a_self_hosted_servers_own_variable_is_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    assert VLLMReranker(base_url="http://10.1.2.3:8000").api_key is not None


def test_http_or_another_port_of_the_providers_host_is_not_its_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    for root in ("http://api.cohere.com", "https://api.cohere.com:8443", "https://x.cohere.com"):
        assert CohereReranker(base_url=root).api_key is None
    assert CohereReranker(base_url="https://api.cohere.com/v2").api_key is not None
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    regional = DashScopeReranker(base_url="https://dashscope-intl.aliyuncs.com")
    assert regional.api_key is not None  # a documented region of the provider's own API


def test_an_empty_api_key_is_refused_rather_than_falling_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    for make in (
        lambda: VLLMReranker(base_url="http://127.0.0.1:9", api_key=""),
        lambda: CohereReranker(base_url="http://127.0.0.1:9", api_key=""),
    ):
        with pytest.raises(ConfigurationError, match="api_key=None") as info:
            make()
        assert key_parts_in(str(info.value)) == []


async def test_a_401_says_which_variable_was_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHERE_API_KEY", KEY)

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return as_json({"message": "no key"}, 401)

    with asgi(handler) as server:
        reranker = CohereReranker(base_url=server.url, retry=FAST)
        with pytest.raises(AuthenticationError, match="COHERE_API_KEY is sent only") as info:
            await reranker.arerank(QUERY, DOCS)
        await reranker.aclose()
    assert key_parts_in(str(info.value)) == []


def test_a_key_over_plain_http_to_another_host_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="milvus_rerank")
    for _ in range(3):
        VLLMReranker(base_url="http://10.254.0.1:8000", api_key=KEY)
    VLLMReranker(base_url="http://127.0.0.1:8000", api_key=KEY)  # loopback: no warning
    VLLMReranker(base_url="http://10.254.0.2:8000")  # no key: no warning
    warnings = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert len(warnings) == 1 and "10.254.0.1" in warnings[0]
    assert key_parts_in(caplog.text) == []


def test_the_cli_sends_a_key_to_a_custom_base_url_only_from_key_env(
    monkeypatch: pytest.MonkeyPatch,
    fault_server: FaultServer,
    fault_plan: FaultPlan,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from milvus_rerank.app.cli import main

    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps(d) for d in DOCS))
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    monkeypatch.setenv("MY_UPSTREAM_KEY", "upstream-key-123")
    argv = ["rerank", "--reranker", "cohere", "--base-url", fault_server.url + "/v2"]
    argv += [QUERY, str(docs)]
    assert main(argv) == 0
    assert "authorization" not in fault_plan.headers[-1]
    assert main([*argv, "--key-env", "MY_UPSTREAM_KEY"]) == 0
    assert fault_plan.headers[-1]["authorization"] == "Bearer upstream-key-123"
    assert main([*argv, "--key-env", "NOT_SET_ANYWHERE"]) != 0
    assert key_parts_in(capsys.readouterr().err) == []


# -- attack F5: a sync call on the private loop's own thread is refused, not a deadlock ------

NESTED_SYNC_CALLS = """
import concurrent.futures, httpx
from milvus_rerank import ConfigurationError, VLLMReranker
from milvus_rerank.providers.api.clients import BackgroundLoop

def ok(request):
    return httpx.Response(200, json={"results": [{"index": 0, "relevance_score": 1.0}]})

def client():
    return httpx.Client(transport=httpx.MockTransport(ok))

inner = VLLMReranker(base_url="http://vllm:8000", http_client=client())

class Hooked(VLLMReranker):
    def _payload(self, query, documents):
        inner.rerank(query, documents)  # runs on the private loop, as sync calls' hooks do
        return super()._payload(query, documents)

try:
    Hooked(base_url="http://vllm:8000", http_client=client()).rerank("q", ["d"])
except ConfigurationError as exc:
    print("rerank:", exc)
print("still serving:", len(inner.rerank("q", ["d"])))
closed = concurrent.futures.Future()

def close_there():
    try:
        inner.close()
        closed.set_result(None)
    except BaseException as exc:
        closed.set_exception(exc)

BackgroundLoop.get().call_soon_threadsafe(close_there)
try:
    closed.result(timeout=20)
except ConfigurationError as exc:
    print("close:", exc)
"""


def test_a_sync_call_on_the_private_loops_thread_is_refused() -> None:
    # Before: the nested rerank() waited for the loop it blocked, hanging every sync call of
    # the process past any deadline; close() there blocked the loop 10 s, then TimeoutError.
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", NESTED_SYNC_CALLS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert time.monotonic() - started < 30
    assert out[0].startswith("rerank: VLLMReranker: a sync rerank() was called on")
    assert out[1] == "still serving: 1"
    assert out[2].startswith("close: VLLMReranker: a sync close() was called on")


# -- attack F6: no local of a failure's frames shows the key ---------------------------------


def frame_locals(exc: BaseException) -> list[str]:
    """The repr of every local of every frame of ``exc``'s traceback (what Sentry, rich's
    ``show_locals`` and ``pytest --showlocals`` print), and ``traceback``'s own rendering."""
    shown = [
        "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())
    ]
    tb = exc.__traceback__
    while tb is not None:
        shown += [f"{name} = {value!r}" for name, value in tb.tb_frame.f_locals.items()]
        tb = tb.tb_next
    return shown


@pytest.mark.parametrize("client", ["own", "injected"])
@pytest.mark.parametrize("mode", MODES)
async def test_no_local_of_a_failures_frames_shows_the_key(mode: str, client: str) -> None:
    # Before: ``plan = Plan(..., headers={..., 'Authorization': 'Bearer <key>'})`` in
    # Call.score's frame, and ``outgoing = Outgoing(...)`` in Call._exchange's.
    replies = [as_json({"message": "bad request"}, 400), (200, [], b"{not json")]

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return replies.pop(0)

    with socket.create_server(("127.0.0.1", 0)) as closed:
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}"
    failures: list[BaseException] = []
    with asgi(handler) as server:
        for url in (server.url, server.url, refused):
            injected: dict[str, Any] = {}
            if client == "injected":
                injected = {"http_client": httpx.Client(), "http_async_client": httpx.AsyncClient()}
            reranker = VLLMReranker(
                base_url=url,
                api_key=KEY,
                headers={"X-Api-Key": KEY[::-1]},
                retry=RetryPolicy(max_retries=0),
                **injected,
            )
            with pytest.raises(ProviderError) as info:
                await call(reranker, mode)
            failures.append(info.value)
            await reranker.aclose()
            for c in injected.values():
                await c.aclose() if isinstance(c, httpx.AsyncClient) else c.close()
    assert [type(f) for f in failures] == [
        ProviderError,
        InvalidResponseError,
        ProviderUnavailableError,
    ]
    for failure in failures:
        shown = frame_locals(failure)
        assert any(line.startswith("plan = ") for line in shown)  # the frames were walked
        for line in shown:
            assert key_parts_in(line) == [] and key_parts_in(line[::-1]) == [], line[:200]


# -- F12: an injected client is bounded by the deadline, whatever the server sends ---------


def endless(opening: bytes, line: bytes) -> Callable[[socket.socket], None]:
    def serve(conn: socket.socket) -> None:
        conn.sendall(opening)
        for _ in range(600):  # 30 s at most
            time.sleep(0.05)
            conn.sendall(line)

    return serve


@pytest.mark.parametrize(
    ("opening", "line"),
    [(b"", b"HTTP/1.1 100 Continue\r\n\r\n"), (b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n")],
    ids=["endless 100 Continue", "endless header lines"],
)
def test_an_injected_client_is_bounded_by_the_deadline(opening: bytes, line: bytes) -> None:
    with RawServer(endless(opening, line)) as server, httpx.Client(timeout=1.0) as client:
        reranker = VLLMReranker(
            base_url=server.url, http_client=client, timeout=1.0, retry=RetryPolicy(deadline=2)
        )
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match="deadline"):
            reranker.rerank(QUERY, DOCS)
        took = time.monotonic() - started
        for _ in range(40):  # the abandoned request's socket was shut: its worker ends
            if not any(t.name.startswith("rerank") for t in threading.enumerate()):
                break
            time.sleep(0.05)
        workers = sum(t.name.startswith("rerank") for t in threading.enumerate())
    print(f"\ninjected client, {line!r} forever: ended after {took:.2f}s, workers left {workers}")
    assert 1.9 <= took < 3.0  # before: still running after 12 s
    assert workers == 0


# -- F13: a fork in the middle of a call leaves the child its slots ----------------------


def test_a_fork_during_a_call_leaves_the_child_every_request_slot() -> None:
    import os

    with asgi(ok_handler(delay=1.0)) as server:
        reranker = VLLMReranker(
            base_url=server.url, max_concurrency=1, retry=RetryPolicy(deadline=3)
        )
        reranker.rerank(QUERY, DOCS)
        busy = threading.Thread(target=reranker.rerank, args=(QUERY, DOCS))
        busy.start()
        time.sleep(0.3)  # the one slot is taken
        pid = os.fork()
        if pid == 0:  # the child: only this thread; the parent's call is not its to finish
            code = 1
            try:
                results = reranker.rerank(QUERY, DOCS)
                code = 0 if [r.index for r in results] == order(DOCS) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        busy.join(10)
        reranker.close()
    assert os.waitstatus_to_exitcode(status) == 0  # before: "waiting for a free request slot"


# -- F21: duplicate keys make an answer mean two things ------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"results": [{"index": 7}], "results": [{"index": 0, "relevance_score": 0.5}]}',
        b'{"results": [{"index": 0, "relevance_score": "x", "relevance_score": 0.5}]}',
        b'{"results": [{"index": 5, "index": 0, "relevance_score": 0.5}]}',
    ],
)
@pytest.mark.parametrize("mode", MODES)
async def test_an_answer_with_a_duplicate_key_is_invalid(body: bytes, mode: str) -> None:
    async def handler(request: dict[str, Any], headers: dict[str, str]) -> Reply:
        return 200, [(b"content-type", b"application/json")], body

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, retry=FAST)
        with pytest.raises(InvalidResponseError, match="twice"):
            await call(reranker, mode, ["d"])
        await reranker.aclose()


# -- F22: response headers echoing the key stay out of httpcore's DEBUG log ---------------


@pytest.mark.parametrize("mode", MODES)
async def test_response_headers_echoing_the_key_are_scrubbed_from_debug_logs(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        echo = [
            (b"location", f"http://evil.example/?k={KEY}".encode()),
            (b"x-echo", urllib.parse.quote(KEY).lower().encode()),
        ]
        return 307, echo, b""

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, api_key=KEY, retry=FAST)
        with pytest.raises(ProviderError):
            await call(reranker, mode)
        await reranker.aclose()
    logged = [r for r in caplog.records if r.name.startswith("httpcore")]
    assert any("receive_response_headers" in r.getMessage() for r in logged)
    assert key_parts_in("\n".join(r.getMessage() for r in caplog.records)) == []


# -- F26: abandoned chunks of an injected client's call give their slots back at once -------


def test_an_injected_clients_abandoned_chunks_free_their_slots_and_threads() -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if "fail" in body["documents"]:
            await asyncio.sleep(0.3)  # every chunk is on its own new connection by then
            return as_json({"message": "bad chunk"}, 400)
        await asyncio.sleep(5)
        return as_json(ranked(body))

    with asgi(handler) as server, httpx.Client(timeout=30) as client:
        reranker = VLLMReranker(
            base_url=server.url, http_client=client, max_batch=1, max_concurrency=4
        )
        took = []
        for call_number in range(4):
            started = time.monotonic()
            with pytest.raises(ProviderError, match="HTTP 400"):
                reranker.rerank(QUERY, ["fail", "slow 1", "slow 2", "slow 3"])
            took.append(time.monotonic() - started)
            if call_number == 0:  # new connections: their sockets are shut, workers end
                time.sleep(0.5)
                workers = sum(t.name.startswith("rerank") for t in threading.enumerate())
        free = reranker._slots._free
    print(f"\nfailed calls over an injected client: {[round(t, 2) for t in took]}s")
    assert free == 4  # before: 0, and the next call waited ~20 s for a slot
    assert max(took) < 1.5
    assert workers == 0  # before: 3 per call, each until its read ended


# -- F28: an injected AsyncClient belongs to one event loop --------------------------------


def test_an_injected_async_client_on_a_second_loop_is_a_configuration_error() -> None:
    with asgi(ok_handler()) as server:
        client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))
        reranker = VLLMReranker(base_url=server.url, http_async_client=client)
        assert [r.index for r in asyncio.run(reranker.arerank(QUERY, DOCS))] == order(DOCS)
        for _ in range(2):  # before: RuntimeError('Event loop is closed') now and then
            with pytest.raises(ConfigurationError, match="one per event loop|per event loop"):
                asyncio.run(reranker.arerank(QUERY, DOCS))
