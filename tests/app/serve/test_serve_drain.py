"""The drain: what a stopping server answers (in-process), and `serve` under SIGTERM (slow)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from milvus_rerank import Reranker  # noqa: E402
from milvus_rerank.app.serve import create_app  # noqa: E402
from milvus_rerank.app.serve.drain import Drain  # noqa: E402

JSON = {"Content-Type": "application/json"}
DOCS = ["milvus is a vector database", "paris is the capital of france", "cat"]


class Held(Reranker):
    """Scores from the text length; each call waits for ``gate`` and counts itself."""

    provider = "held"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        self.calls += 1
        self.gate.wait(30)
        return [float(len(d)) for d in documents]


def shape_of(path: str, key: str, answer: httpx.Response) -> str:
    """The route's error shape the answer has (asserting it has one), and its message."""
    body = answer.json()
    if path == "/v2/rerank":
        assert set(body) == {"id", "message"}
        return str(body["message"])
    if key == "texts":
        assert set(body) == {"error", "error_type"}
        return str(body["error"])
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == answer.status_code
    return str(body["error"]["message"])


def rejected(text: str, reason: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "milvus_rerank_rejected_total" and sample.labels == {
                "reason": reason
            }:
                return sample.value
    return 0.0


def test_a_draining_app_refuses_new_work_and_cuts_what_is_left_in_each_routes_shape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reranker = Held()
    app = create_app(reranker, graceful_timeout=0.3)
    drain: Drain = app.state.serve.drain
    routes = [("/v2/rerank", "documents"), ("/v1/rerank", "documents"), ("/rerank", "texts")]

    async def run() -> tuple[list[httpx.Response], list[httpx.Response], httpx.Response, str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=JSON
        ) as client:
            held = [
                asyncio.ensure_future(client.post(path, json={"query": "q", key: DOCS}))
                for path, key in routes
            ]
            while drain.inflight < len(routes):
                await asyncio.sleep(0.01)
            drain.start()
            health = await client.get("/health")
            refused = [
                await client.post(path, json={"query": "q", key: DOCS}) for path, key in routes
            ]
            with caplog.at_level(logging.INFO, logger="milvus_rerank.serve"):
                await drain.finish(app.state.serve.limits.graceful_timeout)
            cut = list(await asyncio.gather(*held))
            reranker.gate.set()
            metrics = (await client.get("/metrics")).text
            return cut, refused, health, metrics

    cut, refused, health, metrics = asyncio.run(run())
    assert health.status_code == 503 and health.json()["status"] == "draining"
    # Refused before its body is read, a request to /rerank gets vLLM's shape (docs/serve.md).
    before_body = [(path, "documents") for path, _ in routes]
    for (path, key), answer in zip(before_body + routes, refused + cut, strict=True):
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["connection"] == "close"
        assert "retry on another instance" in shape_of(path, key, answer)
    assert all("(grace 0.3 s)" in shape_of(p, k, a) for (p, k), a in zip(routes, cut, strict=True))
    assert rejected(metrics, "draining") == 6
    lines = [r.getMessage() for r in caplog.records if "drain:" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("serve: drain: 3 requests answered 503, cut ")
    assert lines[0].endswith(
        " s after the signal (grace 0.3 s; 0 answered whole, 0 answered with an error, 3 refused"
        " while draining)"
    )
    assert drain.inflight == 0


def test_a_drain_waits_for_requests_that_finish_in_time(caplog: pytest.LogCaptureFixture) -> None:
    reranker = Held()
    app = create_app(reranker)
    drain: Drain = app.state.serve.drain

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=JSON
        ) as client:
            held = [
                asyncio.ensure_future(
                    client.post("/v2/rerank", json={"query": "q", "documents": DOCS})
                )
                for _ in range(2)
            ]
            while drain.inflight < 2:
                await asyncio.sleep(0.01)
            drain.start()
            finishing = asyncio.ensure_future(drain.finish(30))
            await asyncio.sleep(0.2)
            assert not finishing.done()  # it waits for them
            reranker.gate.set()
            with caplog.at_level(logging.INFO, logger="milvus_rerank.serve"):
                await asyncio.wait_for(finishing, 10)
            return list(await asyncio.gather(*held))

    answers = asyncio.run(run())
    assert [a.status_code for a in answers] == [200, 200]
    assert all(len(a.json()["results"]) == len(DOCS) for a in answers)
    lines = [r.getMessage() for r in caplog.records if "drain:" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("serve: drain: 2 requests answered whole")


class Stepped(Reranker):
    """Scores pairs in batches, each call recording its queries and waiting for a step."""

    provider = "stepped"

    def __init__(self) -> None:
        self.steps = threading.Semaphore(0)
        self.calls: list[list[str]] = []

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        raise AssertionError("scored through score_pairs only")

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        self.calls.append(list(queries))
        assert self.steps.acquire(timeout=30), "the test never let this batch run"
        return [float(len(d)) for d in documents]


def test_a_drain_answers_the_oldest_request_whole_first_and_a_cut_drops_queued_rows() -> None:
    reranker = Stepped()
    app = create_app(reranker, graceful_timeout=0.5, max_batch_pairs=2, batch_workers=1)
    state = app.state.serve
    drain: Drain = state.drain

    async def until(predicate: Callable[[], bool]) -> None:
        for _ in range(1000):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    def queued(pairs: int) -> Callable[[], bool]:
        return lambda: state.batcher.pending_pairs == pairs

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=JSON
        ) as client:
            held = []
            for query, pairs in (("q1", 2), ("q2", 6), ("q3", 10)):  # arrival order known
                body = {"query": query, "documents": ["a", "bb", "ccc", "dddd"]}
                held.append(asyncio.ensure_future(client.post("/v2/rerank", json=body)))
                await until(queued(pairs))
            assert len(reranker.calls) == 1  # q1's first pairs, held in the model
            drain.start()  # fair turns would score q2's and q3's first pairs next
            reranker.steps.release(3)
            await until(lambda: len(reranker.calls) == 4)  # q2's last pairs, held in the model
            assert held[0].done() and not held[1].done()
            assert state.batcher.pending_pairs == 4  # q3's
            await drain.finish(state.limits.graceful_timeout)
            assert state.batcher.pending_pairs == 0  # the cut dropped q3's queued pairs
            reranker.steps.release(10)
            await asyncio.sleep(0.2)
            return list(await asyncio.gather(*held))

    answers = asyncio.run(run())
    assert [a.status_code for a in answers] == [200, 503, 503]
    assert [r["index"] for r in answers[0].json()["results"]] == [3, 2, 1, 0]
    assert reranker.calls == [["q1"] * 2, ["q1"] * 2, ["q2"] * 2, ["q2"] * 2]  # none for q3
    assert drain.answered == 1 and drain.cut == 2


# --- `milvus-rerank serve` in a child process, stopped by SIGTERM (slow: a model, a server) ---

#: A document the tiny model reads to its full window: a few hundred distinct ones take
#: seconds on a CPU, deterministically in the work done (not in sleeps).
LONG = " ".join(f"milvus{i} vector database search" for i in range(200))


def _documents(count: int) -> list[str]:
    """``count`` distinct long documents (copies of one would be scored once)."""
    return [f"{i} {LONG}" for i in range(count)]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: The ``serve`` processes a test started: killed and their pipes closed after it.
_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _reap_servers() -> Iterator[None]:
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()


def _serve(model: Path, port: int, *flags: str) -> subprocess.Popen[str]:
    import milvus_rerank

    source = str(Path(milvus_rerank.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    env.pop("MILVUS_RERANK_API_KEY", None)
    command = [sys.executable, "-m", "milvus_rerank.app.cli", "serve", "--reranker"]
    command += ["cross-encoder", "--model", str(model), "--device", "cpu", "--port", str(port)]
    process = subprocess.Popen(
        [*command, *flags], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    _STARTED.append(process)
    watchdog = threading.Timer(120, process.kill)
    watchdog.daemon = True
    watchdog.start()
    banner = process.stderr.readline() if process.stderr else ""
    assert banner.startswith("milvus-rerank serve: "), banner
    return process


@pytest.fixture(scope="module")
def dense_ce(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-encoder whose time goes to forward passes, not to tokenizing (a real model's)."""
    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

    path = tmp_path_factory.mktemp("dense-ce") / "ce"
    return build_tiny_cross_encoder(
        path, num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024
    )


def _inflight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "milvus_rerank_inflight_requests":
                return sample.value
    return 0.0


def _send_and_signal(
    url: str, process: subprocess.Popen[str], bodies: list[tuple[str, str, int]], lead: float = 0
) -> tuple[list[httpx.Response], float]:
    """Post the bodies (the first ``lead`` s before the others), SIGTERM once all are in
    flight; the answers, and seconds to exit."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = []
        for path, key, n in bodies:
            body = {"query": "milvus", key: _documents(n)}
            futures.append(pool.submit(httpx.post, url + path, json=body, timeout=90))
            time.sleep(lead if len(futures) == 1 else 0)
        deadline = time.monotonic() + 30
        while _inflight(url) < len(bodies):
            assert time.monotonic() < deadline, "the requests never were all in flight"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)  # the signal is handled within uvicorn's 0.1 s tick
        health = httpx.get(url + "/health", timeout=10)
        late = httpx.post(url + "/v2/rerank", json={"query": "q", "documents": ["a"]}, timeout=10)
        answers = [future.result() for future in futures]
    process.wait(timeout=60)
    exited = time.monotonic() - signalled
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert late.status_code == 503 and late.headers["retry-after"] == "1"
    assert "the server is stopping" in late.json()["message"]
    return answers, exited


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_answers_every_request_in_flight_whole_then_exits(
    tiny_models: dict[str, Path],
) -> None:
    port = _free_port()
    process = _serve(tiny_models["ce"], port, "--graceful-timeout", "60")
    url = f"http://127.0.0.1:{port}"
    bodies = [("/v2/rerank", "documents", 150), ("/v1/rerank", "documents", 150)]
    bodies += [("/rerank", "texts", 150), ("/rerank", "documents", 150)]
    answers, exited = _send_and_signal(url, process, bodies)
    assert [a.status_code for a in answers] == [200] * 4, [a.text[:200] for a in answers]
    cohere, vllm, tei, root = (a.json() for a in answers)
    assert [len(cohere["results"]), len(vllm["results"]), len(tei), len(root["results"])] == [
        150
    ] * 4
    err = process.stderr.read() if process.stderr else ""
    assert process.returncode == -signal.SIGTERM  # the convention: the signal's own status
    assert "Traceback" not in err and "answered 503" not in err, err
    assert exited < 60, exited


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_with_more_work_than_the_grace_holds_answers_the_oldest_whole_the_rest_503(
    dense_ce: Path,
) -> None:
    grace = 4.0
    port = _free_port()
    process = _serve(dense_ce, port, "--graceful-timeout", str(grace))
    url = f"http://127.0.0.1:{port}"
    for _ in range(2):  # the second is timed: the work this machine does in a second
        started = time.monotonic()
        body = {"query": "milvus", "documents": _documents(100)}
        assert httpx.post(url + "/v2/rerank", json=body, timeout=90).status_code == 200
    size = max(10, min(1000, int(100 * grace / 4 / (time.monotonic() - started))))
    routes = [("/v2/rerank", "documents"), ("/v1/rerank", "documents"), ("/rerank", "texts")]
    bodies = [(path, key, size) for path, key in routes * 4]  # a quarter of the grace each
    answers, exited = _send_and_signal(url, process, bodies, lead=0.3)
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 6, statuses
    assert statuses[0] == 200, statuses  # the oldest, scored first once draining
    for (path, key, n), answer in zip(bodies, answers, strict=True):
        if answer.status_code == 200:  # answered whole
            results = answer.json() if key == "texts" else answer.json()["results"]
            assert len(results) == n
        else:
            assert answer.headers["retry-after"] == "1"
            assert "did not finish this request in time (grace 4 s)" in shape_of(path, key, answer)
    err = process.stderr.read() if process.stderr else ""
    assert "Traceback" not in err and " 500" not in err, err
    summary = [line for line in err.splitlines() if "drain:" in line]
    assert len(summary) == 1, err
    found = re.search(
        r"serve: drain: (\d+) requests answered 503, cut ([\d.]+) s after", summary[0]
    )
    assert found is not None and int(found[1]) == statuses.count(503), summary
    assert grace <= float(found[2]) < grace + 2 and "(grace 4 s; " in summary[0]
    assert process.returncode == -signal.SIGTERM
    assert exited < grace + 5, exited


def test_a_second_signal_cuts_at_once_and_the_grace_is_checked() -> None:
    from milvus_rerank.app.serve import ServeLimits
    from milvus_rerank.core.errors import ConfigurationError

    reranker = Held()
    app = create_app(reranker)
    drain: Drain = app.state.serve.drain

    async def run() -> tuple[httpx.Response, float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=JSON
        ) as client:
            held = asyncio.ensure_future(client.post("/rerank", json={"query": "q", "texts": DOCS}))
            while drain.inflight < 1:
                await asyncio.sleep(0.01)
            hurry = threading.Event()
            started = time.monotonic()
            finishing = asyncio.ensure_future(drain.finish(60, hurry))
            await asyncio.sleep(0.2)
            hurry.set()  # what server.py does on a second SIGTERM or Ctrl-C
            await asyncio.wait_for(finishing, 10)
            answer = await held
            reranker.gate.set()
            return answer, time.monotonic() - started

    answer, took = asyncio.run(run())
    assert answer.status_code == 503 and set(answer.json()) == {"error", "error_type"}
    assert took < 5
    for bad in (0, -1.0, float("inf"), "30"):
        with pytest.raises(ConfigurationError, match="graceful_timeout"):
            ServeLimits(graceful_timeout=bad)  # type: ignore[arg-type]


def test_the_drain_counts_as_answered_whole_only_work_that_succeeded() -> None:
    """A request refused (429) or failed while draining is not "answered whole" in the summary."""

    async def ok() -> str:
        return "ok"

    async def refused() -> str:
        raise RuntimeError("overloaded")

    async def run() -> Drain:
        drain = Drain()
        drain.start()
        assert await drain.guard(ok()) == "ok"
        with pytest.raises(RuntimeError, match="overloaded"):
            await drain.guard(refused())
        assert await drain.guard(ok(), lambda answer: answer != "ok") == "ok"  # e.g. a 429
        return drain

    drain = asyncio.run(run())
    assert (drain.answered, drain.errors, drain.inflight) == (1, 2, 0)
