"""The HTTP layer against misbehaving loopback servers: secrets, deadlines, leaks, bounds.

Every server here is real and listens on 127.0.0.1: uvicorn (``BackgroundServer``) for
answers an ASGI app can give, a raw socket server for byte-level misbehaviour (trickled
headers and bodies). Every loop is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import json
import logging
import socket
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest

from milvus_rerank import (
    ConfigurationError,
    InvalidResponseError,
    JinaReranker,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    RetryPolicy,
    VLLMReranker,
)
from milvus_rerank.serve import BackgroundServer
from tests.fakes import FaultPlan, FaultServer, fake_score
from tests.providers.specs import SPECS

KEY = "sk-live-7Qz3" + "Xy9Lm2Np8Rt4Vw6" * 2
QUERY = "what is milvus"
DOCS = ["milvus is a vector database", "paris is in france", "milvus"]
FAST = RetryPolicy(backoff_base=0.001, backoff_max=0.01)

# -- servers ---------------------------------------------------------------------------------

Reply = tuple[int, list[tuple[bytes, bytes]], "bytes | list[bytes]"]
Handler = Callable[[dict[str, Any], dict[str, str]], Awaitable[Reply]]


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
        (200, [(b"content-type", b"application/json")], b"[" * 100_000 + b"]" * 100_000),
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
        states = len(reranker._loops)
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
