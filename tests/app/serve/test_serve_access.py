"""``serve`` under abuse: keys, hosts, connections, failures and loops, in the route's shape."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")

from milvus_rerank import CrossEncoderReranker, Reranker  # noqa: E402
from milvus_rerank.app.serve import (  # noqa: E402
    create_app,
    served_model_name,
)
from milvus_rerank.app.serve.testing import BackgroundServer  # noqa: E402
from milvus_rerank.core.errors import (  # noqa: E402
    AuthenticationError,
    ConfigurationError,
    InvalidResponseError,
    ProviderUnavailableError,
    RateLimitError,
)
from tests.app.serve import limits_kit  # noqa: E402
from tests.app.serve.limits_kit import (  # noqa: E402
    DOCS,
    JSON,
    QUERY,
    SHAPES,
    SlowPairs,
    assert_shape,
)
from tests.fakes import Failing  # noqa: E402

#: The served tiny model and the quiet uvicorn log, shared with the other limit tests.
local, quiet_uvicorn, server = limits_kit.local, limits_kit.quiet_uvicorn, limits_kit.server

#: Outside the unit tier: loopback servers, faults or load.
pytestmark = pytest.mark.slow


KEY = "serve-key-123456"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_a_pasted_api_key_is_stripped_and_a_bad_one_refused_unseen(
    local: CrossEncoderReranker,
) -> None:
    with BackgroundServer(create_app(local, api_key=f" {KEY}\n")) as running:
        answer = httpx.post(
            running.url + "/v2/rerank", json={"query": QUERY, "documents": DOCS}, headers=AUTH
        )
    assert answer.status_code == 200
    for bad in ("abc1234", "serve key 123456", "serve-key-\x00123456", "serve-kéy-123456", " "):
        with pytest.raises(ConfigurationError) as caught:
            create_app(local, api_key=bad)
        assert "API key from api_key" in str(caught.value)
        assert not bad.strip() or bad.strip() not in str(caught.value)


@pytest.mark.parametrize(("path", "key", "_"), SHAPES)
def test_error_messages_echo_client_values_clipped(
    server: BackgroundServer, path: str, key: str, _: object
) -> None:
    huge = "x" * 15_000
    shape_key = key if path != "/rerank" or key == "texts" else "documents"
    cases: list[dict[str, Any]] = [{"query": " " * 15_000, key: DOCS}]
    if key == "texts":
        cases += [
            {"query": QUERY, key: DOCS, "truncation_direction": huge},
            {"query": QUERY, key: DOCS, "truncate": huge},
            {"query": QUERY, key: DOCS, "raw_scores": huge},
            {"query": QUERY, key: DOCS, "return_text": huge},
        ]
    elif path == "/v2/rerank":
        cases += [
            {"query": QUERY, key: DOCS, "max_tokens_per_doc": huge},
            {"query": QUERY, key: DOCS, "return_documents": huge},
        ]
    else:
        cases += [{"query": QUERY, key: DOCS, "truncate_prompt_tokens": huge}]
    for body in cases:
        answer = httpx.post(server.url + path, json=body)
        assert answer.status_code in (400, 422), answer.text[:200]
        message = assert_shape(path, shape_key, answer, answer.status_code)
        assert len(answer.content) < 400 and "str '" in message  # the type, then a clip


def test_health_and_answers_name_the_model_without_its_path(
    local: CrossEncoderReranker, tiny_models: dict[str, Path]
) -> None:
    path = str(tiny_models["ce"])
    assert local.model_name == path
    with BackgroundServer(create_app(local, api_key=KEY)) as running:
        health = httpx.get(running.url + "/health")
        vllm = httpx.post(
            running.url + "/v1/rerank",
            json={"query": QUERY, "documents": DOCS, "model": {"x": "y" * 5000}},
            headers=AUTH,
        )
    assert health.json() == {"status": "ok", "model": "ce"}
    assert vllm.json()["model"] == "ce"  # never the client's value echoed either
    assert path not in health.text + vllm.text


def test_served_model_names() -> None:
    def named(name: str) -> Reranker:
        reranker = SlowPairs()
        reranker.model_name = name  # type: ignore[misc]
        return reranker

    assert served_model_name(named("BAAI/bge-reranker-v2-m3")) == "BAAI/bge-reranker-v2-m3"
    assert served_model_name(named("/home/alice/models/bge/")) == "bge"
    assert served_model_name(named("./models/mini")) == "mini"
    assert served_model_name(named("~/m/x")) == "x"
    assert served_model_name(named("C:\\Users\\bob\\model")) == "model"
    assert served_model_name(named("/")) == "SlowPairs"
    assert served_model_name(named("/a/b"), "chosen/name") == "chosen/name"


def test_the_bearer_scheme_in_any_case_and_tei_null_options(local: CrossEncoderReranker) -> None:
    body = {"query": QUERY, "documents": DOCS}
    with BackgroundServer(create_app(local, api_key=KEY)) as running:
        url = running.url + "/v2/rerank"
        codes = {
            value: httpx.post(url, json=body, headers={"Authorization": value}).status_code
            for value in (f"bearer {KEY}", f"BEARER  {KEY}", f"Basic {KEY}", KEY, f"Bearer {KEY}x")
        }
        null = httpx.post(
            running.url + "/rerank",
            json={"query": QUERY, "texts": DOCS, "raw_scores": None, "return_text": None},
            headers=AUTH,
        )
        text = httpx.post(
            running.url + "/rerank",
            json={"query": QUERY, "texts": DOCS, "raw_scores": "false"},
            headers=AUTH,
        )
    assert codes == {
        f"bearer {KEY}": 200,
        f"BEARER  {KEY}": 200,
        f"Basic {KEY}": 401,
        KEY: 401,
        f"Bearer {KEY}x": 401,
    }
    assert null.status_code == 200 and len(null.json()) == 3
    assert "raw_scores must be a bool" in assert_shape("/rerank", "texts", text, 422)


def test_slow_headers_and_idle_connections_are_closed_at_the_header_timeout(
    local: CrossEncoderReranker,
) -> None:
    with BackgroundServer(create_app(local, api_key=KEY), header_timeout=1.0) as running:
        partial = socket.create_connection((running.host, running.port), timeout=10)
        partial.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: localhost\r\n")
        idle = socket.create_connection((running.host, running.port), timeout=10)
        trickling = [socket.create_connection((running.host, running.port)) for _ in range(10)]
        # Keep-alive, then the next request's headers never finish.
        again = socket.create_connection((running.host, running.port), timeout=10)
        body = json.dumps({"query": "q", "documents": ["a"]}).encode()
        again.sendall(
            b"POST /v2/rerank HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (KEY.encode(), len(body), body)
        )
        first = b""
        while b"}}" not in first:  # the whole first answer (the JSON ends with "}}")
            first += again.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        again.sendall(b"POST /v2/rerank HTTP/1.1\r\n")
        started = time.monotonic()
        for s in trickling:
            s.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: localhost\r\n")
        while running.connections and time.monotonic() - started < 8:
            for s in trickling:  # a header line every 0.2 s: never complete, never silent
                with contextlib.suppress(OSError):
                    s.sendall(b"X-a: b\r\n")
            time.sleep(0.2)
        closed_after = time.monotonic() - started
        assert running.connections == 0 and closed_after < 4, closed_after
        assert partial.recv(65536).startswith(b"HTTP/1.1 408")
        assert idle.recv(65536) == b""
        assert again.recv(65536).startswith(b"HTTP/1.1 408")
        for s in [partial, idle, again, *trickling]:
            s.close()


def test_past_max_connections_the_longest_wait_for_headers_is_closed(
    local: CrossEncoderReranker,
) -> None:
    app = create_app(local, api_key=KEY)
    with BackgroundServer(app, max_connections=16) as running:
        slow = []
        for _ in range(40):
            s = socket.create_connection((running.host, running.port), timeout=10)
            s.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: localhost\r\n")
            slow.append(s)
        time.sleep(0.3)
        assert running.connections <= 16
        started = time.monotonic()
        answer = httpx.post(
            running.url + "/v2/rerank",
            json={"query": QUERY, "documents": DOCS},
            headers=AUTH,
            timeout=10,
        )
        took = time.monotonic() - started
        assert answer.status_code == 200 and took < 2
        with contextlib.suppress(ConnectionResetError):  # the oldest waits were closed first
            assert slow[0].recv(100) == b""
        for s in slow:
            s.close()


async def test_past_max_connections_inside_requests_a_new_one_gets_503() -> None:
    gate = threading.Event()
    app = create_app(SlowPairs(gate=gate), max_wait_ms=0)
    with BackgroundServer(app, max_connections=2) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            held = [
                asyncio.ensure_future(client.post("/v1/rerank", json={"query": "q", key: ["a"]}))
                for key in ("documents", "documents")
            ]
            deadline = time.monotonic() + 10
            while running.connections < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(base_url=running.url, timeout=10) as other:
                refused = await other.post("/v1/rerank", json={"query": "q", "documents": ["b"]})
            gate.set()
            assert [(await h).status_code for h in held] == [200, 200]
    assert "connections are inside requests" in assert_shape("/v1/rerank", "d", refused, 503)
    assert refused.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (RateLimitError("slow down sk-SECRET-1234", provider="cohere", retry_after=6.2), 429, "7"),
        (RateLimitError("slow down sk-SECRET-1234", provider="cohere"), 429, "1"),
        (
            AuthenticationError("bad key sk-SECRET-1234", provider="cohere", status_code=401),
            502,
            None,
        ),
        (
            ProviderUnavailableError("down sk-SECRET-1234", provider="cohere", status_code=503),
            503,
            None,
        ),
        (
            InvalidResponseError("junk sk-SECRET-1234", provider="cohere", status_code=200),
            502,
            None,
        ),
        (RuntimeError("model crashed"), 500, None),
    ],
)
def test_a_scoring_failure_is_answered_in_the_routes_shape_and_logged_once(
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    status: int,
    retry_after: str | None,
) -> None:
    caplog.set_level(logging.INFO)  # (a failure that is no RerankError: traceback at DEBUG)
    with BackgroundServer(create_app(Failing(error))) as running:
        answers = [
            (path, key, httpx.post(running.url + path, json={"query": QUERY, key: DOCS}))
            for path, key, _ in SHAPES
        ]
    for path, key, answer in answers:
        message = assert_shape(path, key, answer, status)
        assert "SECRET" not in message
        assert answer.headers.get("retry-after") == retry_after
    lines = [r for r in caplog.records if r.name == "milvus_rerank.serve" and r.levelno >= 30]
    assert len(lines) == len(SHAPES)
    assert all(r.exc_info is None and str(status) in r.getMessage() for r in lines)
    assert "SECRET" not in caplog.text and "Traceback" not in caplog.text


def test_serve_over_an_api_reranker_answers_the_upstreams_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from milvus_rerank import CohereReranker
    from milvus_rerank.core.retry import RetryPolicy

    upstream_key = "co-UPSTREAM-KEY-0123456789"
    answers = iter([(401, {}), (429, {"Retry-After": "3"})])

    async def rerank(request: Request) -> JSONResponse:
        status, headers = next(answers)
        return JSONResponse({"message": f"no: {upstream_key}"}, status, headers=headers)

    caplog.set_level(logging.DEBUG)
    upstream = Starlette(routes=[Route("/v2/rerank", rerank, methods=["POST"])])
    with BackgroundServer(upstream) as up:
        reranker = CohereReranker(
            api_key=upstream_key, base_url=up.url + "/v2", retry=RetryPolicy(max_retries=0)
        )
        with reranker, BackgroundServer(create_app(reranker)) as running:
            body = {"query": QUERY, "documents": DOCS}
            refused = httpx.post(running.url + "/v2/rerank", json=body)
            limited = httpx.post(running.url + "/rerank", json={"query": QUERY, "texts": DOCS})
    assert "refused this server's key" in assert_shape("/v2/rerank", "documents", refused, 502)
    assert "rate limited" in assert_shape("/rerank", "texts", limited, 429)
    assert limited.headers["retry-after"] == "3"
    assert upstream_key[:8] not in refused.text + limited.text + caplog.text
    assert "Traceback" not in caplog.text


def test_a_keyless_server_refuses_what_a_web_page_could_send(local: CrossEncoderReranker) -> None:
    body = json.dumps({"query": QUERY, "documents": DOCS})
    with BackgroundServer(create_app(local)) as running:
        url = running.url + "/v2/rerank"

        def post(headers: dict[str, str]) -> httpx.Response:
            return httpx.post(url, content=body, headers=headers)

        plain = post({"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://evil.example"})
        form = post({"Content-Type": "application/x-www-form-urlencoded"})
        none = post({})
        rebound = post({**JSON, "Host": f"rebind.evil.example:{running.port}"})
        health = httpx.get(running.url + "/health", headers={"Host": "rebind.evil.example"})
        fine = [
            post({**JSON, "Host": host}).status_code
            for host in ("localhost:1", "127.0.0.1", "[::1]:8000", "LOCALHOST.", "app.localhost")
        ]
        typed = post({"Content-Type": "application/vnd.api+json; charset=utf-8"})
    for answer in (plain, form, none):
        assert "Content-Type: application/json" in assert_shape("/v2/rerank", "d", answer, 415)
    assert "rebind.evil.example" in assert_shape("/v2/rerank", "d", rebound, 421)
    assert health.status_code == 421 and "model" not in health.json()
    assert fine == [200] * 5 and typed.status_code == 200


def test_allowed_hosts_and_a_key_lift_the_browser_checks(local: CrossEncoderReranker) -> None:
    body = json.dumps({"query": QUERY, "documents": DOCS})
    apps = {
        "named": create_app(local, allowed_hosts=["reranker", "Milvus.Lan."]),
        "any": create_app(local, allowed_hosts=["*"]),
        "key": create_app(local, api_key=KEY),
        "key+named": create_app(local, api_key=KEY, allowed_hosts=["reranker"]),
    }
    got = {}
    for name, app in apps.items():
        with BackgroundServer(app) as running:
            for host in ("reranker:8000", "milvus.lan", "evil.example"):
                for kind in ("application/json", "text/plain"):
                    headers = {**AUTH, "Host": host, "Content-Type": kind}
                    answer = httpx.post(running.url + "/v2/rerank", content=body, headers=headers)
                    got[name, host, kind] = answer.status_code
    json_codes = {k: v for k, v in got.items() if k[2] == "application/json"}
    assert json_codes == {
        **{("named", h, "application/json"): 200 for h in ("reranker:8000", "milvus.lan")},
        ("named", "evil.example", "application/json"): 421,
        **{
            ("any", h, "application/json"): 200
            for h in ("reranker:8000", "milvus.lan", "evil.example")
        },
        **{
            ("key", h, "application/json"): 200
            for h in ("reranker:8000", "milvus.lan", "evil.example")
        },
        ("key+named", "reranker:8000", "application/json"): 200,
        ("key+named", "milvus.lan", "application/json"): 421,
        ("key+named", "evil.example", "application/json"): 421,
    }
    assert got["key", "evil.example", "text/plain"] == 200  # a key: no browser can send it
    assert got["any", "reranker:8000", "text/plain"] == 415  # keyless: JSON only, always
    for bad in ("reranker", ["a b"], [""], [3], ["x/y"]):
        with pytest.raises(ConfigurationError, match="allowed_hosts"):
            create_app(local, allowed_hosts=bad)  # type: ignore[arg-type]


def test_slow_uploads_do_not_hold_scoring_slots(local: CrossEncoderReranker) -> None:
    app = create_app(local, api_key=KEY, max_concurrent_requests=2, body_timeout=5)
    with BackgroundServer(app) as running:
        uploading = []
        for _ in range(4):
            s = socket.create_connection((running.host, running.port), timeout=10)
            s.sendall(
                b"POST /v2/rerank HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{" % KEY.encode()
            )
            uploading.append(s)
        time.sleep(0.3)
        answer = httpx.post(
            running.url + "/v2/rerank", json={"query": QUERY, "documents": DOCS}, headers=AUTH
        )
        for s in uploading:
            s.close()
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("wait", [float("inf"), float("nan"), 1e12, 1000.5, -1.0, True, "2"])
def test_max_wait_ms_is_checked_as_the_command_line_does(
    local: CrossEncoderReranker, wait: object
) -> None:
    with pytest.raises(ConfigurationError, match="max_wait_ms must be milliseconds from 0 to"):
        create_app(local, max_wait_ms=wait)  # type: ignore[arg-type]
    assert create_app(local, max_wait_ms=1000).state.batcher.max_wait == 1.0


def test_a_body_in_one_byte_chunks_is_refused_after_a_thousand(
    local: CrossEncoderReranker,
) -> None:
    payload = json.dumps({"query": "q", "documents": ["a" * 100] * 3000}).encode()[:300_000]
    wire = b"".join(b"1\r\n%c\r\n" % byte for byte in payload) + b"0\r\n\r\n"
    head = (
        b"POST /v2/rerank HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked" % KEY.encode()
    )
    with BackgroundServer(create_app(local, api_key=KEY)) as running:
        with socket.create_connection((running.host, running.port), timeout=10) as raw:

            def send() -> None:
                with contextlib.suppress(OSError):
                    raw.sendall(head + b"\r\n\r\n" + wire)

            sender = threading.Thread(target=send)
            started = time.monotonic()
            sender.start()
            reply = raw.recv(65536)
            took = time.monotonic() - started
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
            sender.join(10)

        # Fair chunks still pass: under 1,024 pieces of any size, more of 256 bytes or larger.
        def pieces(body: bytes, size: int) -> Iterator[bytes]:
            for start in range(0, len(body), size):
                yield body[start : start + size]

        small = json.dumps({"query": QUERY, "documents": DOCS, "pad": "x" * 2000}).encode()
        large = json.dumps({"query": QUERY, "documents": DOCS, "pad": "x" * 400_000}).encode()
        passed = [
            httpx.post(
                running.url + "/v2/rerank",
                content=pieces(body, size),
                headers={**AUTH, **JSON},
                timeout=30,
            ).status_code
            for body, size in ((small, 3), (large, 256))
        ]
    assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
    assert b"at most 1024 pieces plus one per 256 bytes" in reply
    assert took < 2  # before: the whole 1.8 MB parsed on the loop, then "not JSON"
    assert passed == [200, 200]


def test_bodies_of_many_containers_are_refused_before_parsing(local: CrossEncoderReranker) -> None:
    nested = b'{"query":"q","documents":[' + b"[]," * 666_000 + b"[]]}"
    unused = b'{"query":"q","documents":["a"],"x":[' + b"[]," * 666_000 + b"[]]}"
    texts = ["[{" + d + '}]"' for d in DOCS]
    brackets = json.dumps({"query": QUERY, "documents": texts, "note": '[{\\"' * 5000})
    deep = b'{"query": "q", "documents": ' + b"[" * 3_000 + b"]" * 3_000 + b"}"
    with BackgroundServer(create_app(local, api_key=KEY)) as running:
        url = running.url + "/v2/rerank"
        headers = {**AUTH, **JSON}
        timed = []
        for raw in (nested, unused):
            started = time.monotonic()
            timed.append(
                (httpx.post(url, content=raw, headers=headers), time.monotonic() - started)
            )
        texts = httpx.post(url, content=brackets.encode(), headers=headers, timeout=60)
        too_deep = httpx.post(url, content=deep, headers=headers)
    for answer, took in timed:
        message = assert_shape("/v2/rerank", "documents", answer, 400)
        assert "JSON arrays and objects; at most 4256" in message and took < 1
    assert texts.status_code == 200  # brackets inside the texts do not count
    assert "nested too deeply" in assert_shape("/v2/rerank", "documents", too_deep, 400)


def test_a_401_names_the_bearer_scheme(local: CrossEncoderReranker) -> None:
    """RFC 9110: a 401 carries ``WWW-Authenticate`` naming the scheme the server takes."""
    with BackgroundServer(create_app(local, api_key=KEY)) as running:
        answers = [
            httpx.post(running.url + path, json={"query": QUERY, key: DOCS}, headers=headers)
            for path, key, _ in SHAPES
            for headers in ({}, {"Authorization": "Bearer wrong-key-0000"})
        ]
        right = httpx.post(
            running.url + "/v2/rerank", json={"query": QUERY, "documents": DOCS}, headers=AUTH
        )
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert all(a.headers.get("www-authenticate") == "Bearer" for a in answers)
    assert right.status_code == 200 and "www-authenticate" not in right.headers


@pytest.mark.parametrize("pieces", [1, 64])
def test_headers_past_16_kib_are_refused_however_they_arrive(
    local: CrossEncoderReranker, pieces: int
) -> None:
    """Before: headers that came whole in one read passed h11's bound (only 300 KB got 400)."""
    body = json.dumps({"query": QUERY, "documents": DOCS}).encode()

    def request(*extra: bytes) -> bytes:
        return (
            b"POST /v2/rerank HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + b"".join(extra)
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            + body
        )

    large = request(b"X-Junk: " + b"a" * 20_000 + b"\r\n")
    many = request(*[b"X-%d: a\r\n" % i for i in range(3000)])  # short lines, 30 KB in all
    fits = request(b"X-Junk: " + b"a" * 15_000 + b"\r\n")
    with BackgroundServer(create_app(local)) as running:
        replies = []
        for wire in (large, many, fits):
            with socket.create_connection((running.host, running.port), timeout=10) as raw:
                step = -(-len(wire) // pieces)
                with contextlib.suppress(OSError):
                    for start in range(0, len(wire), step):
                        raw.sendall(wire[start : start + step])
                        if pieces > 1:
                            time.sleep(0.002)
                reply = b""
                with contextlib.suppress(OSError):
                    while chunk := raw.recv(65536):
                        reply += chunk
            replies.append(reply)
    for reply in replies[:2]:
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
        message = json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["message"]
        assert "at most 16384" in message
    assert replies[2].startswith(b"HTTP/1.1 200 "), replies[2][:200]


async def test_health_is_answered_while_connections_are_full() -> None:
    """Before: ``GET /health`` past the cap got the 503 meant for rank requests."""
    gate = threading.Event()
    app = create_app(SlowPairs(gate=gate), max_wait_ms=0)
    with BackgroundServer(app, max_connections=2) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            held = [
                asyncio.ensure_future(client.post("/v1/rerank", json={"query": "q", key: ["a"]}))
                for key in ("documents", "documents")
            ]
            deadline = time.monotonic() + 10
            while running.connections < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(base_url=running.url, timeout=10) as other:
                health = await other.get("/health")
            async with httpx.AsyncClient(base_url=running.url, timeout=10) as other:
                query = await other.get("/health?probe=1")
            async with httpx.AsyncClient(base_url=running.url, timeout=10) as other:
                refused = await other.post("/v2/rerank", json={"query": "q", "documents": ["b"]})
            gate.set()
            assert [(await h).status_code for h in held] == [200, 200]
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert query.status_code == 200
    # Refused before routing: vLLM's shape on every route (docs/serve.md, "Connections").
    assert "connections are inside requests" in assert_shape("/v1/rerank", "d", refused, 503)


class BadScores(Reranker):
    """A reranker in this process answering scores that cannot rank (NaN, or too few)."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        return self.scores


@pytest.mark.parametrize(
    ("scores", "reason"),
    [([float("nan"), 1.0, 1.0], "non-finite score nan"), ([1.0], "1 scores for 3 documents")],
)
def test_a_local_rerankers_bad_scores_are_its_own_failure_not_an_upstreams(
    caplog: pytest.LogCaptureFixture, scores: list[float], reason: str
) -> None:
    """Before: 502 "the upstream reranker 'custom' failed", the reason kept out of the log."""
    caplog.set_level(logging.INFO)
    with BackgroundServer(create_app(BadScores(scores))) as running:
        answers = [
            (path, key, httpx.post(running.url + path, json={"query": QUERY, key: DOCS}))
            for path, key, _ in SHAPES
        ]
    for path, key, answer in answers:
        message = assert_shape(path, key, answer, 500)
        assert message == "the reranker failed (InvalidResponseError)"
    lines = [r.getMessage() for r in caplog.records if r.name == "milvus_rerank.serve"]
    assert len(lines) == len(SHAPES) and all(reason in line for line in lines), lines


def test_an_http_rerankers_invalid_answer_stays_an_upstream_failure() -> None:
    from milvus_rerank import VLLMReranker
    from milvus_rerank.app.serve.failures import failure_answer, upstream_providers

    class Custom(VLLMReranker):
        provider = "my-api"  # an API reranker of the user's, not in the registry

    upstreams = upstream_providers(Custom(base_url="http://127.0.0.1:9"))
    assert {"my-api", "cohere", "vllm"} <= upstreams and "custom" not in upstreams
    for provider in ("my-api", "cohere"):
        error = InvalidResponseError("junk", provider=provider)
        answer = failure_answer(error, "x", 400, upstreams)
        assert (answer.status, str(answer)) == (502, f"the upstream reranker {provider!r} failed")
    local = failure_answer(InvalidResponseError("nan", provider="custom"), "x", 400, upstreams)
    assert (local.status, str(local)) == (500, "the reranker failed (InvalidResponseError)")


def test_a_background_server_is_single_use_and_says_why_it_cannot_start() -> None:
    """Before: stop() before start() broke the next start (IndexError); threading's messages."""
    app = create_app(SlowPairs())
    unstarted = BackgroundServer(app)
    unstarted.stop()  # a no-op
    with pytest.raises(RuntimeError, match="no port yet"):
        _ = unstarted.url
    with unstarted as running:
        assert httpx.get(running.url + "/health").status_code == 200
        with pytest.raises(RuntimeError, match="already started; it is single-use"):
            running.start()
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(RuntimeError, match=f"port {port} on 127.0.0.1 is in use"):
                BackgroundServer(app, port=port).start()
    running.stop()  # twice: a no-op
    with pytest.raises(RuntimeError, match="single-use"):
        running.start()
    with pytest.raises(RuntimeError, match="TCP port"):
        BackgroundServer(app, port=-1).start()


def test_an_ipv6_background_server_has_a_usable_url() -> None:
    from milvus_rerank.app.serve.listen import http_url

    assert http_url("::1", 8000) == "http://[::1]:8000"
    assert http_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert http_url("[::1]", 8000) == "http://[::1]:8000"
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with BackgroundServer(create_app(SlowPairs()), host="::1") as running:
        assert running.url.startswith("http://[::1]:")
        assert httpx.get(running.url + "/health").status_code == 200
