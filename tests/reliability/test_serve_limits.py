"""``serve`` under abuse: limits in each route's shape, fairness, backpressure, aborts, loops."""

from __future__ import annotations

import asyncio
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
from milvus_rerank.errors import ConfigurationError  # noqa: E402
from milvus_rerank.serve import BackgroundServer, create_app, run_server  # noqa: E402

QUERY = "what is milvus"
DOCS = ["milvus is a vector database", "paris is the capital of france", "cat"]
#: (path, body key for the documents, how to read the error message of that route's shape)
SHAPES = [
    ("/v2/rerank", "documents", lambda body: body["message"]),
    ("/v1/rerank", "documents", lambda body: body["error"]["message"]),
    ("/rerank", "documents", lambda body: body["error"]["message"]),
    ("/rerank", "texts", lambda body: body["error"]),
]


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
    by_length = httpx.post(server.url + path, content=big)
    assert "20000" in assert_shape(path, key if path != "/rerank" else "documents", by_length, 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, counted as it streams
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    streamed = httpx.post(server.url + path, content=chunks())
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
    answer = httpx.post(server.url + path, content=b"[" * 15_000)
    assert "nested" in assert_shape(path, "documents" if path == "/rerank" else key, answer, 400)
    nested = b'{"query": "q", "%s": ' % key.encode() + b"[" * 9_000 + b"]" * 9_000 + b"}"
    answer = httpx.post(server.url + path, content=nested)
    assert answer.status_code == 400


def test_a_body_that_never_finishes_arriving_is_408(server: BackgroundServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        raw.sendall(
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
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
    assert usage == {
        "total_tokens": None,
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
                head = b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
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
                raw.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
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
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
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
    import uvicorn

    served: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(options))
    with pytest.raises(ConfigurationError, match="--api-key"):
        run_server(local, host="192.0.2.10")
    assert run_server(local, host="192.0.2.10", insecure_no_auth=True) == 0
    assert run_server(local, host="192.0.2.10", api_key="k") == 0
    assert run_server(local, host="::1") == 0
    assert [s["host"] for s in served] == ["192.0.2.10", "192.0.2.10", "::1"]
