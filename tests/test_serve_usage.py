"""``serve``: what each route reports it consumed, and the text it lets through to wrappers.

The usage a route answers is what was counted: a local reranker's tokens (every window, no
padding), or what a wrapped reranker's ``rerank_response`` reported; never a made-up count.
"""

from __future__ import annotations

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
    VLLMReranker,
)
from milvus_rerank.cache import CachedReranker  # noqa: E402
from milvus_rerank.serve import CHARS_PER_TOKEN, BackgroundServer, create_app  # noqa: E402
from tests.conftest import ScoreTableReranker  # noqa: E402
from tests.fakes import fault_server  # noqa: E402

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
        assert create_app(wrapped).state.max_document_chars == alone, wrapped
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
