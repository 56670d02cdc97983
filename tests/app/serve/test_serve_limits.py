"""``serve`` under abuse: bodies, documents and options refused in each route's shape, fairly."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")

from milvus_rerank import CrossEncoderReranker  # noqa: E402
from milvus_rerank.app.serve import (  # noqa: E402
    create_app,
    run_server,
)
from milvus_rerank.app.serve.testing import BackgroundServer  # noqa: E402
from milvus_rerank.core.errors import (  # noqa: E402
    ConfigurationError,
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

#: The served tiny model and the quiet uvicorn log, shared with the other limit tests.
local, quiet_uvicorn, server = limits_kit.local, limits_kit.quiet_uvicorn, limits_kit.server

#: Outside the unit tier: loopback servers, faults or load.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("path", "key", "_"), SHAPES)
def test_a_body_over_the_limit_is_413_by_length_and_by_stream(
    server: BackgroundServer, path: str, key: str, _: object
) -> None:
    big = b'{"query": "q", "%s": ["%s"]}' % (key.encode(), b"x" * 30_000)
    by_length = httpx.post(server.url + path, content=big, headers=JSON)
    assert "20000" in assert_shape(path, key if path != "/rerank" else "documents", by_length, 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, counted as it streams
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    streamed = httpx.post(server.url + path, content=chunks(), headers=JSON)
    assert_shape(path, key if path != "/rerank" else "documents", streamed, 413)


@pytest.mark.parametrize(("path", "key", "_"), SHAPES)
def test_too_many_documents_is_422_in_the_routes_shape(
    server: BackgroundServer, path: str, key: str, _: object
) -> None:
    answer = httpx.post(server.url + path, json={"query": QUERY, key: ["d"] * 6})
    assert "at most 5" in assert_shape(path, key, answer, 422)
    fits = httpx.post(server.url + path, json={"query": QUERY, key: ["d"] * 5})
    assert fits.status_code == 200


@pytest.mark.parametrize(("path", "key", "_"), SHAPES)
def test_deeply_nested_json_is_400_not_500(
    server: BackgroundServer, path: str, key: str, _: object
) -> None:
    answer = httpx.post(server.url + path, content=b"[" * 15_000, headers=JSON)
    # Refused before parsing: 15,000 arrays are far more than 5 documents need.
    message = assert_shape(path, "documents" if path == "/rerank" else key, answer, 400)
    assert "15000 JSON arrays and objects; at most 276" in message
    nested = b'{"query": "q", "%s": ' % key.encode() + b"[" * 9_000 + b"]" * 9_000 + b"}"
    answer = httpx.post(server.url + path, content=nested, headers=JSON)
    assert answer.status_code == 400


def test_a_body_that_never_finishes_arriving_is_408(server: BackgroundServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        raw.sendall(
            b"POST /v1/rerank HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"query": "q", '
        )
        started = time.monotonic()
        reply = raw.recv(65536)
        waited = time.monotonic() - started
        while b"}}" not in reply and (more := raw.recv(65536)):
            reply += more
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"RequestTimeoutError" in reply and 0.5 < waited < 5


def test_long_documents_are_cut_before_tokenizing_and_fitting_ones_score_the_same(
    local: CrossEncoderReranker,
) -> None:
    app = create_app(local, max_body_bytes=20_000_000)
    keep = app.state.max_document_chars
    assert keep == 32 * 512  # the tiny model's window is 512 tokens
    huge = "milvus vector database " * 400_000  # 9.2 MB
    docs = [*DOCS, huge]
    with BackgroundServer(app) as running:
        started = time.monotonic()
        answer = httpx.post(
            running.url + "/v1/rerank", json={"query": QUERY, "documents": docs}, timeout=60
        )
        elapsed = time.monotonic() - started
    assert answer.status_code == 200 and elapsed < 20
    got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    want = local.rerank(QUERY, [*DOCS, huge[:keep]])
    assert got == pytest.approx({r.index: r.score for r in want}, abs=1e-5)
    assert answer.json()["results"][0]["document"]["text"] in docs  # the text as sent
    usage = answer.json()["usage"]
    direct = local.rerank_response(QUERY, [*DOCS, huge[:keep]]).usage.tokens
    assert usage == {
        "total_tokens": direct,  # the tokens the model read, of the cut text
        "documents": 4,
        "characters": sum(len(d) for d in DOCS) + keep,
    }


async def test_a_small_request_is_not_stuck_behind_a_large_one() -> None:
    slow = SlowPairs(per_pair=0.002)
    app = create_app(slow, max_documents=5000, max_batch_tokens=64 * 10, max_body_bytes=10**7)
    big = [f"big document {i}" for i in range(3000)]  # ~6 s of scoring in all
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
            large = asyncio.ensure_future(
                client.post("/v1/rerank", json={"query": "q", "documents": big})
            )
            await asyncio.sleep(0.5)
            started = time.monotonic()
            small = await client.post("/v2/rerank", json={"query": "q", "documents": DOCS})
            small_took = time.monotonic() - started
            assert not large.done()  # the large one is still being scored
            large_answer = await large
    assert small.status_code == 200 and small_took < 1.0
    assert [r["index"] for r in small.json()["results"]] == [
        r.index for r in slow.rerank("q", DOCS)
    ]
    assert large_answer.status_code == 200 and len(large_answer.json()["results"]) == 3000
    batcher = app.state.batcher
    assert len(slow.calls) > 10  # micro-batches of the token budget
    assert all(sum(batcher.cost("q", d) for d in call) <= 640 for call in slow.calls)
    assert sorted(slow.scored()) == sorted([*big, *DOCS])  # every pair scored exactly once


async def test_a_full_queue_answers_429_with_retry_after() -> None:
    slow = SlowPairs(per_call=0.5)
    app = create_app(slow, max_pending_pairs=10, max_concurrent_requests=1000)
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            first = asyncio.ensure_future(
                client.post("/v1/rerank", json={"query": "q", "documents": ["a"] * 8})
            )
            await asyncio.sleep(0.2)  # the first call is running: these queue up
            answers = await asyncio.gather(
                *(client.post(path, json={"query": "q", key: ["b"] * 4}) for path, key, _ in SHAPES)
            )
            assert (await first).status_code == 200
    refused = [(path, key, a) for (path, key, _), a in zip(SHAPES, answers, strict=True)]
    assert any(a.status_code == 200 for _, _, a in refused)  # up to 10 pairs wait
    for path, key, answer in refused:
        if answer.status_code != 200:
            assert "retry later" in assert_shape(path, key, answer, 429)
            assert answer.headers["retry-after"] == "1"


async def test_too_many_concurrent_requests_answer_429() -> None:
    slow = SlowPairs(per_call=0.3)
    app = create_app(slow, max_concurrent_requests=2)
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            answers = await asyncio.gather(
                *(client.post("/rerank", json={"query": "q", "texts": ["a"]}) for _ in range(6))
            )
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) >= 2 and 429 in codes
    for answer in answers:  # refused before the body is read: vLLM's shape on /rerank
        if answer.status_code == 429:
            assert "retry later" in assert_shape("/rerank", "documents", answer, 429)
            assert answer.headers["retry-after"] == "1"


async def test_clients_that_leave_have_their_work_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The model is held busy on its first batch while the other clients wait in the queue; then
    # they all hang up. Their pairs must be dropped as they leave, never reach the model. (Raw
    # sockets: the leaving is the test's act, not an httpx timeout, which fires late under load.)
    gate = threading.Event()
    slow = SlowPairs(gate=gate)
    app = create_app(slow, max_wait_ms=0, max_batch_pairs=16)
    batcher = app.state.batcher
    aborted = 300
    with BackgroundServer(app) as running:
        caplog.set_level(logging.DEBUG, logger="uvicorn.error")
        writers: list[asyncio.StreamWriter] = []
        try:
            for i in range(aborted):
                body = json.dumps({"query": "q", "documents": [f"aborted {i}"]}).encode()
                head = (
                    b"POST /v1/rerank HTTP/1.1\r\nHost: [::1]:8000\r\n"
                    b"Content-Type: application/json"
                )
                _, writer = await asyncio.open_connection(running.host, running.port)
                writer.write(head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                writers.append(writer)
            deadline = time.monotonic() + 20  # every request queued or in the held batch
            while len(slow.scored()) + batcher.pending_pairs < aborted:
                assert time.monotonic() < deadline, "the server did not queue the requests"
                await asyncio.sleep(0.02)
            held = len(slow.scored())
            assert 1 <= held <= 16 and batcher.pending_pairs == aborted - held
        finally:
            for writer in writers:
                writer.close()
        deadline = time.monotonic() + 10  # the model is still held: only drops empty the queue
        while batcher.pending_pairs and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert batcher.pending_pairs == 0
        gate.set()
        # Clients that leave halfway through their body are quiet too.
        for _ in range(20):
            with socket.create_connection((running.host, running.port)) as raw:
                raw.sendall(
                    b"POST /v2/rerank HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                    b"application/json\r\nContent-Length: 500\r\n\r\n{"
                )
        await asyncio.sleep(0.2)
        started = time.monotonic()
        answer = httpx.post(running.url + "/v2/rerank", json={"query": "q", "documents": DOCS})
        took = time.monotonic() - started
    assert answer.status_code == 200 and took < 1.0
    # Only the batch the model held when they left was scored, however loaded the machine is.
    assert sum(d.startswith("aborted") for d in slow.scored()) == held
    assert batcher.pending_pairs == 0
    noisy = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert noisy == []


def test_one_app_serves_two_event_loops(local: CrossEncoderReranker) -> None:
    app = create_app(local, max_wait_ms=5)
    want = [(r.index, r.score) for r in local.rerank(QUERY, DOCS)]
    with BackgroundServer(app) as one, BackgroundServer(app) as two:
        for round_ in range(6):
            for running in (one, two) if round_ % 2 else (two, one):
                started = time.monotonic()
                answer = httpx.post(
                    running.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS}, timeout=5
                )
                assert time.monotonic() - started < 2
                got = [(r["index"], r["relevance_score"]) for r in answer.json()["results"]]
                assert [i for i, _ in got] == [i for i, _ in want]

    async def once() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            answer = await client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
            return answer.status_code

    assert [asyncio.run(asyncio.wait_for(once(), 5)) for _ in range(2)] == [200, 200]


def test_tei_options_are_honoured_or_refused(server: BackgroundServer) -> None:
    url = server.url + "/rerank"
    raw = httpx.post(url, json={"query": QUERY, "texts": DOCS, "raw_scores": True})
    assert "raw_scores=true is not supported" in assert_shape("/rerank", "texts", raw, 422)
    left = httpx.post(url, json={"query": QUERY, "texts": DOCS, "truncation_direction": "Left"})
    assert "truncation_direction" in assert_shape("/rerank", "texts", left, 422)
    long_text = "milvus " * 2430  # 17,010 characters: past the 16,384 the server tokenizes
    strict = httpx.post(url, json={"query": QUERY, "texts": [long_text]})
    assert "truncate=true" in assert_shape("/rerank", "texts", strict, 413)
    lenient = httpx.post(url, json={"query": QUERY, "texts": [long_text], "truncate": True})
    assert lenient.status_code == 200
    plain = httpx.post(url, json={"query": QUERY, "texts": DOCS, "raw_scores": False})
    assert plain.status_code == 200 and len(plain.json()) == 3


def test_cohere_and_vllm_options_are_honoured_or_refused(
    server: BackgroundServer, local: CrossEncoderReranker
) -> None:
    body = {"query": QUERY, "documents": DOCS}
    with_docs = httpx.post(server.url + "/v2/rerank", json={**body, "return_documents": True})
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in with_docs.json()["results"])
    without = httpx.post(server.url + "/v2/rerank", json=body)
    assert all("document" not in r for r in without.json()["results"])
    small = httpx.post(server.url + "/v2/rerank", json={**body, "max_tokens_per_doc": 64})
    assert "not supported" in assert_shape("/v2/rerank", "documents", small, 400)
    window = httpx.post(server.url + "/v2/rerank", json={**body, "max_tokens_per_doc": 4096})
    assert window.status_code == 200
    for path in ("/v1/rerank", "/rerank"):
        cut = httpx.post(server.url + path, json={**body, "truncate_prompt_tokens": 10})
        assert "truncate_prompt_tokens=10" in assert_shape(path, "documents", cut, 400)
        for value in (-1, 512):
            ok = httpx.post(server.url + path, json={**body, "truncate_prompt_tokens": value})
            assert ok.status_code == 200


@pytest.mark.parametrize("value", [False, "", [], {}, 0.0, True, 1.5, "1", -1])
def test_a_top_n_that_is_no_int_is_refused_on_every_route(
    server: BackgroundServer, value: object
) -> None:
    """Before: vLLM's routes took any falsy top_n (false, "", [], {}, 0.0) as "all"."""
    body = {"query": QUERY, "documents": DOCS, "top_n": value}
    for path in ("/v2/rerank", "/v1/rerank", "/rerank"):
        answer = httpx.post(server.url + path, json=body)
        assert "top_n must be a positive int or None" in assert_shape(
            path, "documents", answer, 400
        )


def test_vllms_top_n_zero_or_null_means_every_document(server: BackgroundServer) -> None:
    for path in ("/v1/rerank", "/rerank"):
        for extra in ({"top_n": 0}, {"top_n": None}, {}):
            answer = httpx.post(
                server.url + path, json={"query": QUERY, "documents": DOCS, **extra}
            )
            assert answer.status_code == 200 and len(answer.json()["results"]) == 3


@pytest.mark.parametrize(("path", "key", "_"), SHAPES)
def test_valid_json_with_a_huge_integer_is_not_called_not_json(
    server: BackgroundServer, path: str, key: str, _: object
) -> None:
    """Before: "the request body is not JSON" for an integer past Python's 4,300 digits."""
    import sys

    huge = b'{"query": "q", "%s": ["a"], "top_n": %s}' % (key.encode(), b"9" * 5000)
    answer = httpx.post(server.url + path, content=huge, headers=JSON)
    message = assert_shape(path, "documents" if path == "/rerank" else key, answer, 400)
    assert message == (
        f"the request body holds an integer of more than {sys.get_int_max_str_digits()} "
        "digits, longer than this server reads"
    )
    broken = httpx.post(server.url + path, content=b'{"query": "q", ', headers=JSON)
    shape = "documents" if path == "/rerank" else key
    assert assert_shape(path, shape, broken, 400) == "the request body is not JSON"


def test_tei_truncate_false_refuses_a_long_query_as_a_long_text(server: BackgroundServer) -> None:
    """Before: the query was cut silently (200) where a text as long was refused 413."""
    url = server.url + "/rerank"
    long_query = "milvus " * 2430  # 17,010 characters: past the 16,384 the server tokenizes
    strict = httpx.post(url, json={"query": long_query, "texts": DOCS, "truncate": False})
    message = assert_shape("/rerank", "texts", strict, 413)
    assert message.startswith("query has 17010 characters") and "truncate=true" in message
    lenient = httpx.post(url, json={"query": long_query, "texts": DOCS, "truncate": True})
    assert lenient.status_code == 200


@pytest.mark.parametrize(("path", "key", "_"), SHAPES)
def test_an_api_key_is_required_when_set(
    local: CrossEncoderReranker, path: str, key: str, _: object, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-key-0123456789"
    caplog.set_level(logging.DEBUG)
    with BackgroundServer(create_app(local, api_key=secret)) as running:
        body = {"query": QUERY, key: DOCS}
        missing = httpx.post(running.url + path, json=body)
        wrong = httpx.post(running.url + path, json=body, headers={"Authorization": "Bearer no"})
        right = httpx.post(
            running.url + path, json=body, headers={"Authorization": f"Bearer {secret}"}
        )
        health = httpx.get(running.url + "/health")
    shape_key = "documents" if path == "/rerank" else key  # checked before the body is read
    for answer in (missing, wrong):
        assert secret not in assert_shape(path, shape_key, answer, 401)
    assert right.status_code == 200 and health.status_code == 200
    assert secret not in caplog.text


def test_run_server_refuses_a_public_host_without_a_key(
    local: CrossEncoderReranker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    import uvicorn

    import milvus_rerank.app.serve.server

    served: list[tuple[Any, dict[str, Any]]] = []
    frozen: list[bool] = []

    def run(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        config = server.config  # the app and the options run_server gave uvicorn
        options = ("host", "http", "ws", "h11_max_incomplete_event_size")
        served.append((config.app, {name: getattr(config, name) for name in options}))

    # Serving stops at uvicorn's server; the addresses (not this machine's) are not bound.
    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(
        milvus_rerank.app.serve.server, "bind_sockets", lambda host, port: [socket.socket()]
    )
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    with pytest.raises(ConfigurationError, match="--api-key"):
        run_server(local, host="192.0.2.10")
    assert run_server(local, host="192.0.2.10", insecure_no_auth=True) == 0
    assert run_server(local, host="192.0.2.10", api_key="serve-key-123") == 0
    assert run_server(local, host="::1") == 0
    assert [options["host"] for _, options in served] == ["192.0.2.10", "192.0.2.10", "::1"]
    assert frozen == [True] * 3  # after the model is loaded, before serving
    for _, options in served:  # uvicorn's h11, guarded, and no websockets
        assert options["http"].__name__ == "GuardedH11Protocol" and options["ws"] == "none"
        assert options["h11_max_incomplete_event_size"] == 16 * 1024

    async def host_answer(app: Any, host: str) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            answer = await client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
            return answer.status_code

    # Keyless on a public address (--insecure-no-auth): any Host; keyless on loopback: not.
    hosts = [asyncio.run(host_answer(app, "reranker.lan")) for app, _ in served]
    assert hosts == [200, 401, 421]


def test_the_connection_cap_leaves_descriptors_for_a_burst_of_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import milvus_rerank.app.serve.connections as serve

    limits = {}
    for files in (None, 256, 1024, 100_000, 100):
        monkeypatch.setattr(serve, "open_file_limit", lambda files=files: files)
        limits[files] = serve.connection_limits(1000)
    assert limits == {
        None: (1000, 2048),
        256: (128, 64),
        1024: (704, 256),
        100_000: (1000, 2048),
        100: (11, 25),
    }
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ConfigurationError, match="header_timeout"):
            serve.uvicorn_options(header_timeout=bad)  # type: ignore[arg-type]


# The second outside attack (attack14b): keys, echoes, names, auth, connections, upstreams,
# browsers, slow bodies, waits, chunked and nested bodies.
