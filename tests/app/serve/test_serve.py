"""``milvus-rerank serve``: every wire format, our clients round-trip, cross-request batches."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")

from milvus_rerank import (  # noqa: E402
    CohereReranker,
    CrossEncoderReranker,
    JinaReranker,
    Reranker,
    TEIReranker,
    VLLMReranker,
)
from milvus_rerank.app.cli import main  # noqa: E402
from milvus_rerank.app.serve import RequestBatcher as Batcher  # noqa: E402
from milvus_rerank.app.serve import create_app  # noqa: E402
from milvus_rerank.app.serve.testing import BackgroundServer  # noqa: E402
from tests.conftest import ScoreTableReranker  # noqa: E402

QUERY = "what is milvus"
DOCS = ["milvus is a vector database", "paris is the capital of france", "milvus", "cat"]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def local(tiny_models: dict[str, Path]) -> CrossEncoderReranker:
    return CrossEncoderReranker(str(tiny_models["ce"]))


@pytest.fixture(scope="module")
def server(local: CrossEncoderReranker) -> Iterator[BackgroundServer]:
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    with BackgroundServer(create_app(local, model_name="tiny", max_wait_ms=20)) as running:
        yield running


def expected(local: CrossEncoderReranker, top_n: int | None = None) -> list[tuple[int, float]]:
    return [(r.index, r.score) for r in local.rerank(QUERY, DOCS, top_n=top_n)]


def test_cohere_v2_format(server: BackgroundServer, local: CrossEncoderReranker) -> None:
    body = httpx.post(
        f"{server.url}/v2/rerank",
        json={"model": "tiny", "query": QUERY, "documents": DOCS, "top_n": 2},
    ).json()
    assert set(body) == {"id", "results", "meta"}
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == expected(local, 2)


def test_vllm_format_on_v1_and_root(server: BackgroundServer, local: CrossEncoderReranker) -> None:
    for path in ("/v1/rerank", "/rerank"):
        body = httpx.post(f"{server.url}{path}", json={"query": QUERY, "documents": DOCS}).json()
        assert [(r["index"], r["relevance_score"]) for r in body["results"]] == expected(local)
        assert body["results"][0]["document"]["text"] == DOCS[body["results"][0]["index"]]
        assert body["model"] == "tiny" and "usage" in body


def test_tei_format_on_root(server: BackgroundServer, local: CrossEncoderReranker) -> None:
    body = httpx.post(
        f"{server.url}/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}
    ).json()
    assert isinstance(body, list)
    assert [(r["index"], r["score"]) for r in body] == expected(local)
    assert all(r["text"] == DOCS[r["index"]] for r in body)


@pytest.mark.parametrize(
    ("make", "root"),
    [
        (lambda url: CohereReranker(base_url=url), "/v2"),
        (lambda url: VLLMReranker(base_url=url), ""),
        (lambda url: JinaReranker(base_url=url, api_key="unused-key"), "/v1"),
        (lambda url: TEIReranker(base_url=url, max_client_batch_size=3), ""),
    ],
)
async def test_our_clients_round_trip(
    server: BackgroundServer, local: CrossEncoderReranker, make: object, root: str
) -> None:
    client = make(server.url + root)  # type: ignore[operator]
    want = expected(local)
    ranked = client.rerank(QUERY, DOCS, top_n=3)
    assert [r.index for r in ranked] == [i for i, _ in want[:3]]
    assert [r.score for r in ranked] == pytest.approx([s for _, s in want[:3]], abs=1e-5)
    async with client:
        results = await client.arerank(QUERY, DOCS)
    assert [r.index for r in results] == [i for i, _ in want]
    assert [r.score for r in results] == pytest.approx([s for _, s in want], abs=1e-5)
    client.close()


def test_bad_requests_get_each_formats_error(server: BackgroundServer) -> None:
    cohere = httpx.post(f"{server.url}/v2/rerank", json={"query": "", "documents": DOCS})
    assert cohere.status_code == 400 and "query" in cohere.json()["message"]
    vllm = httpx.post(f"{server.url}/v1/rerank", json={"query": QUERY, "documents": [1]})
    assert vllm.status_code == 400 and "documents[0]" in vllm.json()["error"]["message"]
    tei = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "texts": "oops"})
    assert tei.status_code == 422 and tei.json()["error_type"] == "Validation"
    garbage = httpx.post(f"{server.url}/v1/rerank", content=b"{not json", headers=JSON)
    assert garbage.status_code == 400


def test_health(server: BackgroundServer) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


async def test_concurrent_requests_share_batches(local: CrossEncoderReranker) -> None:
    app = create_app(local, max_wait_ms=50)
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/v1/rerank", json={"query": f"{QUERY} {i}", "documents": DOCS})
                    for i in range(16)
                )
            )
    assert all(a.status_code == 200 for a in answers)
    batcher = app.state.batcher
    assert batcher.requests == 16
    assert batcher.batches < 16  # requests were scored together
    for i, answer in enumerate(answers):  # and each got its own query's scores
        own = local.rerank(f"{QUERY} {i}", DOCS)
        assert [r["index"] for r in answer.json()["results"]] == [r.index for r in own]
        assert [r["relevance_score"] for r in answer.json()["results"]] == pytest.approx(
            [r.score for r in own], abs=1e-5
        )


async def test_batcher_passes_failures_to_every_waiter() -> None:
    def broken(queries: object, documents: object) -> list[float]:
        raise RuntimeError("model crashed")

    batcher = Batcher(broken, max_wait=0.01)
    results = await asyncio.gather(
        batcher.score("q", ["a"]), batcher.score("q", ["b"]), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_a_lone_request_does_not_wait_for_company() -> None:
    batcher = Batcher(lambda queries, documents: [1.0] * len(documents), max_wait=60)
    # Nothing came together yet, so the minute-long wait (the longest allowed) is not paid.
    assert await asyncio.wait_for(batcher.score("q", ["a", "b"]), timeout=30) == [1.0, 1.0]
    assert await asyncio.wait_for(batcher.score("q", ["c"]), timeout=30) == [1.0]
    assert batcher.batches == 2


class DeclaresPairs(ScoreTableReranker):
    """Defines no ``score_pairs`` of its own, but declares that pairs may be batched."""

    batching = "pairs"


def test_serve_batches_as_the_reranker_declares() -> None:
    # The declared capability decides, not whether the class overrides score_pairs.
    assert create_app(ScoreTableReranker()).state.batcher.whole_requests
    assert not create_app(DeclaresPairs()).state.batcher.whole_requests
    assert create_app(DeclaresPairs()).state.serve.local is None


class PairCounter(ScoreTableReranker):
    """Records the pairs that reach the public ``score_pairs``."""

    def __init__(self, table: dict[str, float]) -> None:
        super().__init__(table)
        self.pairs: list[tuple[str, str]] = []

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        self.pairs += zip(queries, documents, strict=True)
        return super().score_pairs(queries, documents)


def test_any_reranker_is_served_through_score_pairs() -> None:
    reranker = PairCounter({"milvus": 0.9, "cat": 0.1})
    with BackgroundServer(create_app(reranker)) as running:
        body = httpx.post(
            f"{running.url}/v2/rerank", json={"query": QUERY, "documents": ["cat", "milvus"]}
        ).json()
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == [(1, 0.9), (0, 0.1)]
    assert reranker.pairs == [(QUERY, "cat"), (QUERY, "milvus")]


@pytest.fixture
def any_port_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` binds its port before loading the model: not here (test_cli.py checks it)."""
    import milvus_rerank.app.commands as commands

    monkeypatch.setattr(commands, "check_port", lambda host, port: None, raising=False)


@pytest.mark.usefixtures("any_port_free")
def test_serve_command_hands_a_loaded_reranker_and_options(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import milvus_rerank.app.serve

    seen: dict[str, Any] = {}

    def run_server(reranker: Reranker, **options: Any) -> int:
        seen.update(options, scores=reranker.rerank(QUERY, DOCS), reranker=reranker)
        return 0

    monkeypatch.setattr(milvus_rerank.app.serve, "run_server", run_server)
    monkeypatch.delenv("MILVUS_RERANK_API_KEY", raising=False)
    argv = ["serve", "--reranker", "cross-encoder", "--model", str(tiny_models["ce"])]
    assert main([*argv, "--port", "9001", "--max-wait-ms", "7", "--graceful-timeout", "40"]) == 0
    assert isinstance(seen.pop("reranker"), CrossEncoderReranker) and seen.pop("scores")
    assert seen == {
        "host": "127.0.0.1",
        "port": 9001,
        "max_wait_ms": 7.0,
        "model_name": None,
        "api_key": None,
        "insecure_no_auth": False,
        "allowed_hosts": None,
        "header_timeout": 10.0,
        "max_connections": 1000,
        "max_body_bytes": 2_000_000,
        "max_documents": 1000,
        "max_document_chars": None,
        "max_batch_tokens": 8192,
        "max_pending_pairs": 16_384,
        "max_concurrent_requests": 512,
        "body_timeout": 30.0,
        "graceful_timeout": 40.0,
    }


# -- LLM rerankers: the body's instruction, views ------------------------------------------------


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("torch")
    from milvus_rerank import Qwen3Reranker

    path = Qwen3Reranker.build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen3") / "q3")
    return Qwen3Reranker(str(path), device="cpu").load()


@pytest.fixture(scope="module")
def qwen3_server(qwen3: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(qwen3, max_wait_ms=20)) as running:
        yield running


LEGAL = "Given a legal question, retrieve the statutes that answer it"


def _scores(answer: httpx.Response) -> dict[int, float]:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    rows = body if isinstance(body, list) else body["results"]
    return {r["index"]: r.get("relevance_score", r.get("score")) for r in rows}


def test_a_body_instruction_scores_with_that_instruction(
    qwen3_server: BackgroundServer, qwen3: Any
) -> None:
    want = dict(enumerate(qwen3.with_instruction(LEGAL).score_pairs([QUERY] * 4, DOCS)))
    default = dict(enumerate(qwen3.score_pairs([QUERY] * 4, DOCS)))
    assert any(abs(want[i] - default[i]) > 1e-4 for i in want)
    url = qwen3_server.url
    for path, body in [
        ("/v2/rerank", {"documents": DOCS}),
        ("/v1/rerank", {"documents": DOCS}),
        ("/rerank", {"documents": [{"text": d} for d in DOCS]}),
        ("/rerank", {"texts": DOCS}),
    ]:
        answer = httpx.post(url + path, json={"query": QUERY, "instruction": LEGAL, **body})
        assert _scores(answer) == pytest.approx(want, abs=1e-6), path
        plain = httpx.post(url + path, json={"query": QUERY, "instruction": None, **body})
        assert _scores(plain) == pytest.approx(default, abs=1e-6), path
    # The view's tokens (its instruction's prompt) are what the request is reported to use.
    tokens = qwen3.with_instruction(LEGAL).rerank_response(QUERY, DOCS).usage.tokens
    assert tokens != qwen3.rerank_response(QUERY, DOCS).usage.tokens
    answer = httpx.post(
        url + "/v1/rerank", json={"query": QUERY, "documents": DOCS, "instruction": LEGAL}
    )
    assert answer.json()["usage"]["total_tokens"] == tokens


async def test_requests_with_different_instructions_batch_apart(
    qwen3: Any,
) -> None:
    app = create_app(qwen3, max_wait_ms=50)
    instructions = [None, LEGAL, "Find code", None, LEGAL, "Find code"]
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/v1/rerank",
                        json={"query": f"{QUERY} {i}", "documents": DOCS, "instruction": text},
                    )
                    for i, text in enumerate(instructions)
                )
            )
    assert app.state.batcher.batches < len(instructions)  # they did share model calls
    for i, (text, answer) in enumerate(zip(instructions, answers, strict=True)):
        scorer = qwen3 if text is None else qwen3.with_instruction(text)
        want = dict(enumerate(scorer.score_pairs([f"{QUERY} {i}"] * 4, DOCS)))
        assert _scores(answer) == pytest.approx(want, abs=1e-5), (i, text)
    assert list(app.state.instruction_views) == [LEGAL, "Find code"]


def test_bad_instructions_get_each_formats_error(qwen3_server: BackgroundServer) -> None:
    url = qwen3_server.url
    surrogate = '"bad \\ud800 text"'  # a lone surrogate, as JSON escapes it
    for value in ("3", '["x"]', '{"a": 1}', json.dumps("x" * 5000), surrogate):
        docs, tail = json.dumps(DOCS), f'"instruction": {value}}}'
        body = f'{{"query": "q", "documents": {docs}, {tail}'
        json_body = {"Content-Type": "application/json"}  # a keyless server refuses others
        cohere = httpx.post(f"{url}/v2/rerank", content=body, headers=json_body)
        assert cohere.status_code == 400 and "instruction" in cohere.json()["message"], value
        tei_body = f'{{"query": "q", "texts": {docs}, {tail}'
        tei = httpx.post(f"{url}/rerank", content=tei_body, headers=json_body)
        assert tei.status_code == 422 and "instruction" in tei.json()["error"], value


def test_the_instruction_views_kept_are_bounded(
    qwen3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import milvus_rerank.app.serve.instructions

    monkeypatch.setattr(milvus_rerank.app.serve.instructions, "MAX_INSTRUCTION_VIEWS", 2)
    app = create_app(qwen3)
    with BackgroundServer(app) as running:
        for text in ("one", "two", "one", "three"):
            answer = httpx.post(
                f"{running.url}/v2/rerank",
                json={"query": QUERY, "documents": DOCS[:1], "instruction": text},
            )
            assert answer.status_code == 200
    assert list(app.state.instruction_views) == ["one", "three"]  # "two" was the oldest


def test_a_reranker_without_instructions_refuses_one(server: BackgroundServer) -> None:
    for path, body, error in [
        ("/v2/rerank", {"documents": DOCS}, lambda b: b["message"]),
        ("/v1/rerank", {"documents": DOCS}, lambda b: b["error"]["message"]),
        ("/rerank", {"texts": DOCS}, lambda b: b["error"]),
    ]:
        answer = httpx.post(
            f"{server.url}{path}", json={"query": QUERY, "instruction": "legal", **body}
        )
        assert answer.status_code == 422, path
        message = error(answer.json())
        assert "CrossEncoderReranker takes no instruction" in message
        assert "qwen3, bge-llm, mxbai-v2" in message
        # No instruction, or null, is the reranker's own scoring.
        assert httpx.post(f"{server.url}{path}", json={"query": QUERY, **body}).status_code == 200
        null = {"query": QUERY, "instruction": None, **body}
        assert httpx.post(f"{server.url}{path}", json=null).status_code == 200


def test_an_instruction_view_is_served_with_its_base_limits(qwen3: Any) -> None:
    view = qwen3.with_instruction(LEGAL)
    base_app, view_app = create_app(qwen3), create_app(view)
    assert view_app.state.max_document_chars == base_app.state.max_document_chars
    assert view_app.state.max_document_chars == 32 * qwen3.input_window()
    window = qwen3.input_window()
    with BackgroundServer(view_app) as running:
        answer = httpx.post(
            f"{running.url}/v2/rerank",
            json={"query": QUERY, "documents": DOCS, "max_tokens_per_doc": window},
        )
    want = dict(enumerate(view.score_pairs([QUERY] * 4, DOCS)))
    assert _scores(answer) == pytest.approx(want, abs=1e-6)


@pytest.mark.usefixtures("any_port_free")
def test_serve_command_strips_the_key_and_refuses_a_bad_one_before_loading(
    tiny_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import milvus_rerank.app.commands
    import milvus_rerank.app.serve

    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        milvus_rerank.app.serve, "run_server", lambda reranker, **options: seen.update(options) or 0
    )
    argv = ["serve", "--reranker", "cross-encoder", "--model", str(tiny_models["ce"])]
    monkeypatch.setenv("MILVUS_RERANK_API_KEY", "serve-key-123456\n")
    assert main([*argv, "--served-model-name", "mini", "--allowed-hosts", "a, b.lan"]) == 0
    assert seen["api_key"] == "serve-key-123456" and seen["model_name"] == "mini"
    assert seen["allowed_hosts"] == ["a", "b.lan"]
    assert main([*argv, "--api-key", " other-key-0987 "]) == 0
    assert seen["api_key"] == "other-key-0987"
    monkeypatch.setenv("MILVUS_RERANK_API_KEY", "")  # empty: no key
    assert main(argv) == 0 and seen["api_key"] is None

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the key was checked")

    monkeypatch.setattr(milvus_rerank.app.commands, "open_from_args", no_model)
    capsys.readouterr()
    for bad, source in (
        (["--api-key", "k3y-x"], "--api-key"),
        (["--api-key", "two words-123"], "--api-key"),
    ):
        assert main([*argv, *bad]) == 2
        err = capsys.readouterr().err
        assert source in err and bad[1] not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("MILVUS_RERANK_API_KEY", "abc12")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "MILVUS_RERANK_API_KEY is shorter than 8" in err and "abc12" not in err


class _Stuck(Reranker):
    """Scores only once released: a scoring path that hangs (a deadlocked worker)."""

    provider = "stuck"

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        self.release.wait(30)
        return [0.0] * len(documents)


def test_health_reports_a_scoring_path_that_makes_no_progress() -> None:
    """Requests waiting on a stuck scorer: /health answers 503, then ok once it moves again."""
    import threading
    import time

    stuck = _Stuck()
    with BackgroundServer(create_app(stuck, stall_after=0.3)) as running:
        assert httpx.get(f"{running.url}/health").json()["status"] == "ok"
        answers: list[int] = []
        waiter = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    f"{running.url}/v2/rerank", json={"query": "q", "documents": ["a"]}, timeout=30
                ).status_code
            )
        )
        waiter.start()
        deadline = time.monotonic() + 10
        health = httpx.get(f"{running.url}/health")
        while health.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            health = httpx.get(f"{running.url}/health")
        assert health.status_code == 503
        assert health.json()["status"] == "stalled"
        assert health.json()["waiting_requests"] == 1
        stuck.release.set()
        waiter.join(10)
        assert answers == [200]
        assert httpx.get(f"{running.url}/health").status_code == 200


def test_stall_after_must_be_positive() -> None:
    from milvus_rerank import ConfigurationError

    with pytest.raises(ConfigurationError, match="stall_after"):
        create_app(_Stuck(), stall_after=0)


@pytest.mark.parametrize("name", ["header_timeout", "max_connections"])
def test_a_connection_limit_given_to_the_app_is_refused_not_ignored(name: str) -> None:
    from milvus_rerank import ConfigurationError

    with pytest.raises(ConfigurationError, match=f"{name}: a connection limit.*run_server"):
        create_app(ScoreTableReranker(), **{name: 5})


def test_health_reports_a_stuck_scorer_though_its_clients_gave_up() -> None:
    """Before: a client leaving counted as progress, so clients that time out (a proxy's 30 s)
    kept /health ok while the scorer stayed stuck for good."""
    import time

    stuck = _Stuck()

    def impatient(url: str) -> None:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/v2/rerank", json={"query": "q", "documents": ["a"]}, timeout=0.2)

    try:
        with BackgroundServer(create_app(stuck, stall_after=0.5, batch_workers=1)) as running:
            deadline = time.monotonic() + 10
            health = httpx.get(f"{running.url}/health")
            while health.status_code == 200 and time.monotonic() < deadline:
                impatient(running.url)  # every client gives up; the worker stays stuck
                health = httpx.get(f"{running.url}/health")
            assert health.status_code == 503, health.json()
            assert health.json()["status"] == "stalled"
            stuck.release.set()  # the worker moves again: healthy once it has
            deadline = time.monotonic() + 10
            while health.status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.05)
                health = httpx.get(f"{running.url}/health")
            assert health.json()["status"] == "ok"
    finally:
        stuck.release.set()


class AsyncScores(Reranker):
    """Scores through its own async path (native_async); its sync path is a failing stub."""

    provider = "async"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.running = self.peak = self.cancelled = 0
        self.threads: set[str] = set()

    async def _ascore(self, query: str, documents: list[str]) -> Sequence[float]:
        import threading

        self.threads.add(threading.current_thread().name)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return [float(len(d)) for d in documents]

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        raise RuntimeError("the sync path: serve should have awaited _ascore")


class AsyncOnly(Reranker):
    """Defines only ``_ascore``: constructible, and served."""

    async def _ascore(self, query: str, documents: list[str]) -> Sequence[float]:
        return [float(len(d)) for d in documents]


async def test_a_native_async_reranker_is_served_through_its_async_path() -> None:
    """Before: served through the sync ``_score`` in a worker thread (500 here)."""
    scorer = AsyncScores(delay=0.2)
    assert scorer.native_async and scorer.batching == "whole"
    body = {"query": "q", "documents": ["aa", "b", "ccc"]}
    with BackgroundServer(create_app(scorer, batch_workers=2)) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            posts = [client.post(path, json=body) for path in ("/v1/rerank", "/rerank") * 3]
            answers = await asyncio.gather(*posts)
            cohere = await client.post("/v2/rerank", json=body)
            with pytest.raises(httpx.TimeoutException):  # a client that leaves
                await client.post("/v2/rerank", json=body, timeout=0.05)
            for _ in range(100):  # its call is cancelled with it
                if scorer.cancelled:
                    break
                await asyncio.sleep(0.05)
    for answer in [*answers, cohere]:
        assert answer.status_code == 200, answer.text
        assert [r["index"] for r in answer.json()["results"]] == [2, 0, 1]
    assert scorer.peak == 2  # batch_workers bounds the requests scored at once
    assert scorer.threads == {"uvicorn"}  # on the server's event loop, no worker thread
    assert scorer.cancelled == 1
    with BackgroundServer(create_app(AsyncOnly())) as running:
        only = httpx.post(running.url + "/v2/rerank", json=body)
    assert [r["index"] for r in only.json()["results"]] == [2, 0, 1]


async def test_a_native_async_request_past_max_pending_pairs_is_429() -> None:
    scorer = AsyncScores(delay=0.5)
    app = create_app(scorer, max_pending_pairs=4, batch_workers=1)
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            first = asyncio.ensure_future(
                client.post("/v1/rerank", json={"query": "q", "documents": ["a"] * 3})
            )
            for _ in range(100):
                if scorer.running:
                    break
                await asyncio.sleep(0.02)
            refused = await client.post("/v1/rerank", json={"query": "q", "documents": ["b"] * 3})
            assert (await first).status_code == 200
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "3 pairs are already waiting" in refused.json()["error"]["message"]


def test_the_async_gate_bounds_its_holders_across_event_loops() -> None:
    import contextlib
    import threading

    from milvus_rerank.app.serve.gate import AsyncGate

    gate = AsyncGate(2)
    lock = threading.Lock()
    inside = peak = 0

    async def hold() -> None:
        nonlocal inside, peak
        async with gate:
            with lock:
                inside += 1
                peak = max(peak, inside)
            await asyncio.sleep(0.02)
            with lock:
                inside -= 1

    async def loop() -> None:
        holders = [asyncio.ensure_future(hold()) for _ in range(6)]
        leaving = asyncio.ensure_future(hold())  # a waiter cancelled: its place goes on
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.gather(*holders)
        with contextlib.suppress(asyncio.CancelledError):
            await leaving

    threads = [threading.Thread(target=asyncio.run, args=(loop(),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert peak == 2 and gate.held == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork")
def test_a_forked_child_forgets_the_work_of_its_parents_threads() -> None:
    import os
    import time

    batcher = Batcher(lambda queries, documents: [0.0] * len(queries), whole_requests=True)
    batcher._busy = 1  # a worker thread of the parent, stuck: no such thread in a child
    time.sleep(0.01)
    assert batcher.stalled_for() > 0
    pid = os.fork()
    if pid == 0:  # the child
        os._exit(0 if batcher.stalled_for() == 0 and batcher.pending_pairs == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert batcher.stalled_for() > 0  # the parent's own state is left alone
