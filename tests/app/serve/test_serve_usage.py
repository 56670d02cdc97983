"""``serve``: what each route reports it consumed, and the text it lets through to wrappers.

The usage a route answers is what was counted: a local reranker's tokens (every window, no
padding), or what a wrapped reranker's ``rerank_response`` reported; never a made-up count.
"""

from __future__ import annotations

import asyncio
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
    FallbackReranker,
    JinaReranker,
    ProviderUnavailableError,
    Reranker,
    TEIReranker,
    Usage,
    VLLMReranker,
)
from milvus_rerank.app.serve import CHARS_PER_TOKEN, create_app  # noqa: E402
from milvus_rerank.app.serve.limits import UNKNOWN_WINDOW
from milvus_rerank.app.serve.testing import BackgroundServer  # noqa: E402
from milvus_rerank.wrappers.cache import CachedReranker  # noqa: E402
from tests.conftest import ScoreTableReranker  # noqa: E402
from tests.fakes import FaultServer, api_reranker, fault_server  # noqa: E402

__all__ = ["fault_server"]

QUERY = "what is milvus"
DOCS = ["milvus is a vector database", "paris is the capital of france", "milvus", "cat"]
WINDOW = 64
#: A document whose best passage starts well past one window's worth of characters.
TAIL = "alan turing proposed a test of machine intelligence"
LONG = "germany " * 400 + TAIL
PASSAGE_DOCS = [DOCS[0], LONG, DOCS[1]]


@pytest.fixture(autouse=True)
def quiet_uvicorn() -> None:
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def local(tiny_models: dict[str, Path]) -> CrossEncoderReranker:
    return CrossEncoderReranker(str(tiny_models["ce"]), device="cpu").load()


@pytest.fixture(scope="module")
def passages(tiny_models: dict[str, Path]) -> CrossEncoderReranker:
    """A local reranker reading up to 20 windows of 64 tokens of each document."""
    return CrossEncoderReranker(
        str(tiny_models["ce"]),
        device="cpu",
        max_length=WINDOW,
        long_documents="max_passage",
        max_passages=20,
    ).load()


@pytest.fixture(scope="module")
def server(local: CrossEncoderReranker) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(local, max_wait_ms=20)) as running:
        yield running


def unreachable() -> VLLMReranker:
    """A second member that is never asked (the first answers): nothing listens there."""
    return VLLMReranker(base_url="http://127.0.0.1:9")


class Down(Reranker):
    """Unavailable on every call."""

    provider = "down"

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        raise ProviderUnavailableError("down", provider="down", status_code=503)


def clients(url: str) -> dict[str, Any]:
    return {
        "cohere": CohereReranker(base_url=url + "/v2"),
        "vllm": VLLMReranker(base_url=url),
        "jina": JinaReranker(base_url=url + "/v1", api_key="unused-key"),
    }


def scores(answer: httpx.Response) -> dict[int, float]:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    rows = body if isinstance(body, list) else body["results"]
    return {r["index"]: r.get("relevance_score", r.get("score")) for r in rows}


# -- F12: the text a wrapper's members read ----------------------------------------------------


def test_wrappers_let_every_window_of_a_max_passage_member_through(
    passages: CrossEncoderReranker, local: CrossEncoderReranker
) -> None:
    alone = create_app(passages).state.max_document_chars
    assert alone == CHARS_PER_TOKEN * WINDOW * 20
    for wrapped in (
        FallbackReranker([passages, unreachable()]),
        FallbackReranker([unreachable(), passages]),
        CachedReranker(passages),
        CachedReranker(FallbackReranker([passages, unreachable()])),
    ):
        assert wrapped.passages_per_document() == 20
        cap = create_app(wrapped).state.max_document_chars
        if isinstance(wrapped, CachedReranker) and wrapped.reranker is passages:
            assert cap == alone
        else:  # the API member's window is unknown: its documents are not cut to the local's
            assert cap == CHARS_PER_TOKEN * UNKNOWN_WINDOW * 20 > alone, wrapped
    # A member with a larger window is cut to none of the smaller one's: the largest counts.
    wide = FallbackReranker([passages, local])
    assert wide.input_window() == 512 and wide.passages_per_document() == 20
    assert create_app(wide).state.max_document_chars >= CHARS_PER_TOKEN * 512
    assert Reranker.passages_per_document(ScoreTableReranker()) == 1
    assert create_app(ScoreTableReranker()).state.max_document_chars == CHARS_PER_TOKEN * 8192


@pytest.mark.parametrize("wrap", ["fallback", "cached"])
def test_a_best_passage_past_one_window_scores_through_serve_as_directly(
    passages: CrossEncoderReranker, wrap: str
) -> None:
    one_window = CHARS_PER_TOKEN * WINDOW
    assert LONG.index(TAIL) > one_window
    direct = passages.rerank_response(QUERY, PASSAGE_DOCS)
    cut = passages.rerank(QUERY, [LONG[:one_window]])[0].score
    long_score = next(r.score for r in direct.results if r.index == 1)
    assert long_score > cut + 1e-3  # the best passage is the one past the first window
    wrapped: Reranker = (
        FallbackReranker([passages, unreachable()])
        if wrap == "fallback"
        else CachedReranker(passages)
    )
    with (
        BackgroundServer(create_app(wrapped)) as running,
        VLLMReranker(base_url=running.url) as client,
    ):
        served = client.rerank_response(QUERY, PASSAGE_DOCS)
    assert [r.index for r in served.results] == [r.index for r in direct.results]
    assert [r.score for r in served.results] == pytest.approx(
        [r.score for r in direct.results], abs=1e-5
    )
    assert served.usage.tokens == direct.usage.tokens  # the member's windows, all counted


# -- F13: usage per route -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cohere", "vllm", "jina"])
async def test_our_clients_get_the_tokens_the_local_reranker_counts(
    server: BackgroundServer, local: CrossEncoderReranker, name: str
) -> None:
    want = local.rerank_response(QUERY, DOCS).usage
    assert want.tokens is not None and want.tokens > 0
    client = clients(server.url)[name]
    with client:
        got = client.rerank_response(QUERY, DOCS, top_n=2)
        assert got.usage == Usage(tokens=want.tokens, requests=1)  # no search unit made up
        other = local.rerank_response("a longer query about milvus", DOCS[:2]).usage.tokens
        again = await client.arerank_response("a longer query about milvus", DOCS[:2])
        assert again.usage.tokens == other != want.tokens


def test_each_route_puts_the_tokens_in_its_own_field(
    server: BackgroundServer, local: CrossEncoderReranker
) -> None:
    tokens = local.rerank_response(QUERY, DOCS).usage.tokens
    body = {"query": QUERY, "documents": DOCS}
    cohere = httpx.post(server.url + "/v2/rerank", json=body).json()
    assert cohere["meta"] == {"api_version": {"version": "2"}, "tokens": {"input_tokens": tokens}}
    for path in ("/v1/rerank", "/rerank"):
        usage = httpx.post(server.url + path, json=body).json()["usage"]
        assert usage["total_tokens"] == tokens and usage["documents"] == len(DOCS)
    tei = httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": DOCS})
    assert isinstance(tei.json(), list)
    assert tei.headers["x-compute-tokens"] == str(tokens)  # TEI's place: its body is an array
    with TEIReranker(base_url=server.url) as client:  # our TEI client reads that header
        assert client.rerank_response(QUERY, DOCS).usage == Usage(tokens=tokens, requests=1)


async def test_requests_sharing_batches_each_get_their_own_tokens(
    local: CrossEncoderReranker,
) -> None:
    app = create_app(local, max_wait_ms=50)
    asks = [(f"{QUERY} {'again ' * i}", DOCS[: 1 + i % 4]) for i in range(12)]
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/rerank", json={"query": q, "documents": d}) for q, d in asks)
            )
    assert app.state.batcher.batches < len(asks)  # they did share model calls
    for (query, documents), answer in zip(asks, answers, strict=True):
        want = local.rerank_response(query, documents).usage.tokens
        assert answer.json()["usage"]["total_tokens"] == want, query


def test_max_passage_windows_are_counted(
    passages: CrossEncoderReranker, tiny_models: dict[str, Path]
) -> None:
    direct = passages.rerank_response(QUERY, PASSAGE_DOCS).usage.tokens
    truncating = CrossEncoderReranker(str(tiny_models["ce"]), device="cpu", max_length=WINDOW)
    one_window = truncating.rerank_response(QUERY, PASSAGE_DOCS).usage.tokens
    assert direct is not None and one_window is not None and direct > 2 * one_window
    with BackgroundServer(create_app(passages)) as running:
        for client in clients(running.url).values():
            with client:
                assert client.rerank_response(QUERY, PASSAGE_DOCS).usage.tokens == direct


def test_a_fallback_app_reports_the_answering_members_usage(
    local: CrossEncoderReranker,
) -> None:
    want = local.rerank_response(QUERY, DOCS)
    chain = FallbackReranker([Down(), local])
    with BackgroundServer(create_app(chain)) as running:
        for client in clients(running.url).values():
            with client:
                got = client.rerank_response(QUERY, DOCS)
            assert got.usage.tokens == want.usage.tokens
            assert [r.index for r in got.results] == [r.index for r in want.results]
    # Failing open has no scores to serve: the failure is answered as what it
    # was (every member unavailable: 503), never with NaN scores.
    failing = FallbackReranker([Down()], fail_open=True)
    with BackgroundServer(create_app(failing)) as running:
        answer = httpx.post(running.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert answer.status_code == 503 and "nan" not in answer.text.lower()


async def test_concurrent_wrapped_requests_each_get_their_own_usage(
    local: CrossEncoderReranker,
) -> None:
    app = create_app(FallbackReranker([Down(), local]), max_wait_ms=50)
    asks = [(f"{QUERY} {'again ' * i}", DOCS[: 1 + i % 4]) for i in range(10)]
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/rerank", json={"query": q, "documents": d}) for q, d in asks)
            )
    # Each request is one call of the fallback, whole (its local member still batches them).
    assert app.state.batcher.batches == len(asks)
    for (query, documents), answer in zip(asks, answers, strict=True):
        want = local.rerank_response(query, documents)
        assert answer.json()["usage"]["total_tokens"] == want.usage.tokens, query
        assert scores(answer) == pytest.approx({r.index: r.score for r in want.results}, abs=1e-5)


def test_an_upstreams_reported_usage_passes_through_and_nothing_is_invented(
    fault_server: FaultServer,
) -> None:
    cohere_upstream = api_reranker("cohere", fault_server.url)  # bills 1 search unit a call
    vllm_upstream = api_reranker("vllm", fault_server.url)  # reports 10 tokens a call
    body = {"query": QUERY, "documents": DOCS}
    with BackgroundServer(create_app(cohere_upstream)) as running:
        cohere = httpx.post(running.url + "/v2/rerank", json=body).json()
        assert cohere["meta"] == {
            "api_version": {"version": "2"},
            "billed_units": {"search_units": 1},
        }
        assert (
            httpx.post(running.url + "/v1/rerank", json=body).json()["usage"]["total_tokens"]
            is None
        )
    with BackgroundServer(create_app(vllm_upstream)) as running:
        assert (
            httpx.post(running.url + "/v1/rerank", json=body).json()["usage"]["total_tokens"] == 10
        )
        cohere = httpx.post(running.url + "/v2/rerank", json=body).json()
        assert cohere["meta"] == {"api_version": {"version": "2"}, "tokens": {"input_tokens": 10}}
    cohere_upstream.close()
    vllm_upstream.close()


class Batched(ScoreTableReranker):
    """A reranker with a batched ``score_pairs`` of its own, which counts nothing."""

    def __init__(self) -> None:
        super().__init__({"milvus": 0.9, "cat": 0.1})
        self.pair_calls = 0

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        self.pair_calls += 1
        return super().score_pairs(queries, documents)


def test_a_reranker_that_counts_nothing_is_reported_as_counting_nothing() -> None:
    reranker = Batched()
    body = {"query": QUERY, "documents": ["cat", "milvus"]}
    with BackgroundServer(create_app(reranker)) as running:
        cohere = httpx.post(running.url + "/v2/rerank", json=body).json()
        vllm = httpx.post(running.url + "/v1/rerank", json=body).json()
        tei = httpx.post(running.url + "/rerank", json={"query": QUERY, "texts": ["cat"]})
    assert reranker.pair_calls == 3  # served through its own score_pairs
    assert cohere["meta"] == {"api_version": {"version": "2"}}
    assert vllm["usage"]["total_tokens"] is None
    assert tei.status_code == 200 and "x-compute-tokens" not in tei.headers
    table = ScoreTableReranker({"milvus": 0.9})  # the base score_pairs: reports its (empty) usage
    with BackgroundServer(create_app(table)) as running:
        answer = httpx.post(running.url + "/v1/rerank", json=body)
    assert scores(answer) == {1: 0.9, 0: 0.0}
    assert answer.json()["usage"]["total_tokens"] is None


def test_copies_of_a_document_share_one_score_and_count_once_through_serve(
    local: CrossEncoderReranker,
) -> None:
    # The same chunk twice (two retrievers found it): served as the library scores it.
    docs = [*DOCS, DOCS[0], DOCS[2], DOCS[0]]
    want = local.rerank_response(QUERY, docs)
    assert want.usage.tokens == local.rerank_response(QUERY, DOCS).usage.tokens
    with BackgroundServer(create_app(local, max_batch_pairs=2)) as running:
        answer = httpx.post(running.url + "/v1/rerank", json={"query": QUERY, "documents": docs})
    got = scores(answer)
    assert got[0] == got[4] == got[6] and got[2] == got[5]
    want_scores = {r.index: r.score for r in want.results}
    assert got == pytest.approx(want_scores, abs=1e-5)  # other batch shapes: float32 noise
    assert answer.json()["usage"]["total_tokens"] == want.usage.tokens
