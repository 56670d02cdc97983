"""``serve`` under abuse: limits in each route's shape, fairness, backpressure, aborts, loops."""

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
    run_server,
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
from tests.fakes import Failing  # noqa: E402

QUERY = "what is milvus"
JSON = {"Content-Type": "application/json"}
DOCS = ["milvus is a vector database", "paris is the capital of france", "cat"]
#: (path, body key for the documents, how to read the error message of that route's shape)
SHAPES = [
    ("/v2/rerank", "documents", lambda body: body["message"]),
    ("/v1/rerank", "documents", lambda body: body["error"]["message"]),
    ("/rerank", "documents", lambda body: body["error"]["message"]),
    ("/rerank", "texts", lambda body: body["error"]),
]

#: Outside the unit tier: loopback servers, faults or load.
pytestmark = pytest.mark.slow


def assert_shape(path: str, key: str, answer: httpx.Response, status: int) -> str:
    """The answer has ``status`` and the error shape of its route; returns the message."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    if path == "/v2/rerank":
        assert set(body) == {"id", "message"}
        return str(body["message"])
    if key == "texts":
        assert set(body) == {"error", "error_type"} and isinstance(body["error"], str)
        return str(body["error"])
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == status
    return str(body["error"]["message"])


class SlowPairs(Reranker):
    """Scores from the text length, taking ``per_pair`` seconds a pair; records every call."""

    provider = "slow"

    def __init__(
        self, per_pair: float = 0.0, per_call: float = 0.0, gate: threading.Event | None = None
    ) -> None:
        self.per_pair = per_pair
        self.per_call = per_call
        self.gate = gate  # when given, every call waits for it (holds the model busy)
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    @staticmethod
    def value(document: str) -> float:
        return (len(document) % 97) / 97

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        return [self.value(d) for d in documents]

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        with self._lock:
            self.calls.append(list(documents))
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.per_call + self.per_pair * len(documents))
        return [self.value(d) for d in documents]

    def scored(self) -> list[str]:
        with self._lock:
            return [d for call in self.calls for d in call]


@pytest.fixture(autouse=True)
def quiet_uvicorn(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    yield


@pytest.fixture(scope="module")
def local(tiny_models: dict[str, Path]) -> CrossEncoderReranker:
    return CrossEncoderReranker(str(tiny_models["ce"]), device="cpu").load()


@pytest.fixture(scope="module")
def server(local: CrossEncoderReranker) -> Iterator[BackgroundServer]:
    app = create_app(local, max_body_bytes=20_000, max_documents=5, body_timeout=1.0)
    with BackgroundServer(app) as running:
        yield running


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
