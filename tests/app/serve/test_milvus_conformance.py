"""``serve`` answers Milvus's ``vllm`` and ``tei`` rerank providers as their Go code expects.

The client (``milvus_client.py``) sends exactly what Milvus sends and checks exactly what it
checks; these tests point it at a real ``serve`` on loopback, over a tiny cross-encoder, and
compare every score with the local reranker's. Where Milvus and ``serve`` disagree by design,
a test says so (the ``quirk`` tests), so docs/deploy.md can tell an operator what to set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from milvus_rerank import CrossEncoderReranker, TEIReranker, VLLMReranker  # noqa: E402
from milvus_rerank.app.serve import create_app  # noqa: E402
from milvus_rerank.app.serve.testing import BackgroundServer  # noqa: E402
from milvus_rerank.milvus import server_side_params  # noqa: E402
from tests.app.serve.milvus_client import (  # noqa: E402
    MilvusCallError,
    milvus_function_call,
    milvus_rerank_call,
)
from tests.conftest import CORPUS  # noqa: E402

QUERY = "what is milvus"
KEY = "serve-key-for-milvus"
PROVIDERS = ("vllm", "tei")
#: 70 texts (three batches at Milvus's default 32): the corpus, copies of it, and empty texts
#: (Milvus sends a null VARCHAR as "").
DOCS = [f"{text} {i // len(CORPUS)}" for i, text in enumerate(CORPUS * 11)] + CORPUS[:2] + [""] * 2


@pytest.fixture(scope="module")
def local(tiny_models: dict[str, Path]) -> CrossEncoderReranker:
    return CrossEncoderReranker(str(tiny_models["ce"]))


@pytest.fixture(scope="module")
def server(local: CrossEncoderReranker) -> Iterator[BackgroundServer]:
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    with BackgroundServer(create_app(local, model_name="tiny")) as running:
        yield running


@pytest.fixture(scope="module")
def keyed(local: CrossEncoderReranker) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(local, model_name="tiny", api_key=KEY)) as running:
        yield running


def reference(local: CrossEncoderReranker, docs: list[str], query: str = QUERY) -> list[float]:
    return local.score_pairs([query] * len(docs), docs)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", [1, 7, None, 1000])
def test_scores_equal_the_local_rerankers_at_every_batch_size(
    server: BackgroundServer, local: CrossEncoderReranker, provider: str, batch: int | None
) -> None:
    params = None if batch is None else {"max_client_batch_size": batch}
    scores = milvus_rerank_call(server.url, provider, QUERY, DOCS, params=params)
    assert scores == pytest.approx(reference(local, DOCS), abs=1e-5)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_document_scored_exactly_once(
    server: BackgroundServer, local: CrossEncoderReranker, provider: str
) -> None:
    # Milvus de-duplicates by primary key, not text: equal texts come in one batch.
    docs = ["milvus", "milvus", "", "cat", "", "milvus"]
    scores = milvus_rerank_call(server.url, provider, QUERY, docs)  # strict: exactly once
    assert scores[0] == scores[1] == scores[5] and scores[2] == scores[4]
    assert scores == pytest.approx(reference(local, docs), abs=1e-5)
    # A batch as large as serve's --max-documents default (1,000) is one request.
    large = [f"document number {i} about milvus" for i in range(1000)]
    scores = milvus_rerank_call(
        server.url, provider, QUERY, large, params={"max_client_batch_size": 1000}
    )
    assert scores == pytest.approx(reference(local, large), abs=1e-5)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_credential_is_the_serve_key(
    keyed: BackgroundServer, local: CrossEncoderReranker, provider: str
) -> None:
    scores = milvus_rerank_call(keyed.url, provider, QUERY, DOCS[:5], credential=KEY)
    assert scores == pytest.approx(reference(local, DOCS[:5]), abs=1e-5)
    for credential in (None, "not-the-key-at-all"):
        with pytest.raises(MilvusCallError) as caught:
            milvus_rerank_call(
                keyed.url, provider, QUERY, ["d"], credential=credential, retry_wait=0.01
            )
        assert (caught.value.status, caught.value.attempts) == (401, 3)


def test_the_packages_function_params_run_on_milvus(
    server: BackgroundServer, keyed: BackgroundServer, local: CrossEncoderReranker
) -> None:
    # What server_side_ranker puts in the Function, run as Milvus runs it.
    expected = reference(local, DOCS)
    for reranker in (VLLMReranker(base_url=server.url), TEIReranker(base_url=server.url)):
        params = server_side_params(reranker, [QUERY])
        assert milvus_function_call(params, DOCS) == pytest.approx(expected, abs=1e-5)
    for reranker in (
        VLLMReranker(base_url=keyed.url, api_key=KEY),
        TEIReranker(base_url=keyed.url, api_key=KEY),
    ):
        params = server_side_params(reranker, ["other", QUERY], credential="rerank")
        scores = milvus_function_call(params, DOCS, credentials={"rerank": KEY}, query_index=1)
        assert scores == pytest.approx(expected, abs=1e-5)


def test_go_escaped_text_scores_as_sent(
    server: BackgroundServer, local: CrossEncoderReranker
) -> None:
    # Go writes <, >, & and U+2028 as \u escapes: serve must read them back as the text.
    query, docs = "<milvus> & search", ["a <b>tag</b> & more", "line\u2028break", "naïve 東京"]
    for provider in PROVIDERS:
        scores = milvus_rerank_call(server.url, provider, query, docs)
        assert scores == pytest.approx(reference(local, docs, query), abs=1e-5)


def test_early_milvus_2_6_vllm_path(server: BackgroundServer, local: CrossEncoderReranker) -> None:
    # Early 2.6 posted vllm's {"query", "documents"} to /v2/rerank: serve's Cohere v2 route
    # answers it with the same results field.
    scores = milvus_rerank_call(server.url, "vllm", QUERY, DOCS, path="/v2/rerank")
    assert scores == pytest.approx(reference(local, DOCS), abs=1e-5)


def call_status(server: BackgroundServer, provider: str, **options: object) -> int | None:
    docs = options.pop("docs", ["milvus"])
    query = options.pop("query", QUERY)
    with pytest.raises(MilvusCallError) as caught:
        milvus_rerank_call(server.url, provider, query, docs, retry_wait=0.01, **options)  # type: ignore[arg-type]
    assert caught.value.attempts == 3  # Milvus retries every status but 200, 4xx too
    return caught.value.status


def test_quirk_a_batch_past_max_documents_fails_the_search(server: BackgroundServer) -> None:
    # max_client_batch_size above serve's --max-documents: every batch is answered 422.
    docs = ["d"] * 1001
    for provider in PROVIDERS:
        params = {"max_client_batch_size": 1001}
        assert call_status(server, provider, docs=docs, params=params) == 422


def test_quirk_truncation_options_serve_does_not_honour(server: BackgroundServer) -> None:
    # serve truncates every pair to the model window on the right, and says so.
    assert call_status(server, "tei", params={"truncation_direction": "Left"}) == 422
    assert call_status(server, "vllm", params={"truncate_prompt_tokens": 8}) == 400
    # At least the window (512 here) is accepted: it is what serve does anyway.
    assert milvus_rerank_call(
        server.url, "vllm", QUERY, ["d"], params={"truncate_prompt_tokens": 512}
    )


def test_quirk_an_empty_query_is_refused(server: BackgroundServer) -> None:
    # Milvus sends the Function's query as written; serve refuses an empty one (400/422).
    assert call_status(server, "vllm", query="") == 400
    assert call_status(server, "tei", query=" ") == 422


def test_quirk_tei_truncate_false_refuses_a_text_past_the_character_cap(
    server: BackgroundServer, local: CrossEncoderReranker
) -> None:
    # TEIReranker's Function params carry truncate=false (TEI's own default): serve then
    # answers 413 for a text past --max-document-chars (16,384 characters here), as TEI does
    # for one past its window, and the search fails. truncate=true scores it truncated.
    long_doc = "milvus " * 3000
    docs = ["cat", long_doc]
    assert call_status(server, "tei", docs=docs, params={"truncate": False}) == 413
    scores = milvus_rerank_call(server.url, "tei", QUERY, docs, params={"truncate": True})
    assert scores == pytest.approx(reference(local, docs), abs=1e-5)
    assert milvus_rerank_call(server.url, "vllm", QUERY, docs) == pytest.approx(scores, abs=1e-5)
