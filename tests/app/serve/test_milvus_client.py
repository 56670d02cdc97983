"""The Milvus test client does what Milvus's Go code does: request bytes, headers, answer rules.

Each test holds the client to one line of the Go code it mirrors (see ``milvus_client.py``),
over ``httpx.MockTransport``: a conformance test can only trust a client that is itself right.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from tests.app.serve.milvus_client import (
    MilvusCallError,
    go_json,
    milvus_function_call,
    milvus_rerank_call,
    read_answer,
)

Handler = Callable[[httpx.Request], httpx.Response]


def recording(answer: Handler) -> tuple[list[httpx.Request], httpx.MockTransport]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return answer(request)

    return seen, httpx.MockTransport(handle)


def echo_scores(request: httpx.Request) -> httpx.Response:
    """A well-behaved server: score = the document's length, results best first."""
    body = json.loads(request.content)
    docs = body.get("documents", body.get("texts"))
    ranked = sorted(range(len(docs)), key=lambda i: -len(docs[i]))
    if "texts" in body:
        return httpx.Response(200, json=[{"index": i, "score": len(docs[i])} for i in ranked])
    results = [{"index": i, "relevance_score": len(docs[i])} for i in ranked]
    return httpx.Response(200, json={"id": "x", "model": "m", "results": results})


def test_go_json_is_marshal_output() -> None:
    # encoding/json: sorted keys, no spaces, HTML characters and U+2028/9 escaped, UTF-8 kept.
    body = go_json({"query": "a<b>&c\u2028", "documents": ["é", "\ud800"], "truncate": False})
    assert body == (
        b'{"documents":["\xc3\xa9","\xef\xbf\xbd"],"query":"a\\u003cb\\u003e\\u0026c\\u2028",'
        b'"truncate":false}'
    )


@pytest.mark.parametrize(
    ("provider", "params", "body"),
    [
        ("vllm", None, b'{"documents":["d1","d2"],"query":"q"}'),
        (
            "vllm",
            {"truncate_prompt_tokens": "512", "max_client_batch_size": "2"},
            b'{"documents":["d1","d2"],"query":"q","truncate_prompt_tokens":512}',
        ),
        ("tei", None, b'{"query":"q","texts":["d1","d2"]}'),
        (
            "tei",
            {"truncate": "False", "truncation_direction": "Right"},
            b'{"query":"q","texts":["d1","d2"],"truncate":false,"truncation_direction":"Right"}',
        ),
    ],
)
def test_request_bytes_path_and_headers(
    provider: str, params: dict[str, str] | None, body: bytes
) -> None:
    seen, transport = recording(echo_scores)
    scores = milvus_rerank_call(
        "http://rerank-host:8000/v1/ignored?x=1",
        provider,
        "q",
        ["d1", "d2"],
        credential="k3y-k3y-k3y",
        params=params,
        transport=transport,
    )
    assert scores == [2.0, 2.0]
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://rerank-host:8000/rerank?x=1"  # path replaced
    assert request.content == body
    assert dict(request.headers) == {
        "host": "rerank-host:8000",
        "user-agent": "Go-http-client/1.1",
        "content-type": "application/json",
        "accept-encoding": "gzip",
        "authorization": "Bearer k3y-k3y-k3y",
        "content-length": str(len(body)),
    }


def test_no_credential_sends_no_authorization() -> None:
    seen, transport = recording(echo_scores)
    milvus_rerank_call("http://h:1", "tei", "q", ["d"], transport=transport)
    assert "authorization" not in seen[0].headers


def test_batches_of_max_client_batch_size_in_order() -> None:
    seen, transport = recording(echo_scores)
    docs = ["x" * n for n in range(1, 71)]
    scores = milvus_rerank_call("http://h:1", "vllm", "q", docs, transport=transport)
    assert scores == [float(n) for n in range(1, 71)]
    assert [len(json.loads(r.content)["documents"]) for r in seen] == [32, 32, 6]
    seen.clear()
    milvus_rerank_call(
        "http://h:1", "vllm", "q", docs, params={"max_client_batch_size": 70}, transport=transport
    )
    assert len(seen) == 1
    assert milvus_rerank_call("http://h:1", "tei", "q", [], transport=transport) == []


@pytest.mark.parametrize(
    "params",
    [
        {"max_client_batch_size": "0"},
        {"max_client_batch_size": "3.0"},
        {"truncate_prompt_tokens": "many"},
    ],
)
def test_params_refused_as_milvus_refuses_them(params: dict[str, str]) -> None:
    with pytest.raises(MilvusCallError):
        milvus_rerank_call("http://h:1", "vllm", "q", ["d"], params=params)


def test_tei_params_refused() -> None:
    for params in ({"truncate": "yes"}, {"truncation_direction": "right"}):
        with pytest.raises(MilvusCallError):
            milvus_rerank_call("http://h:1", "tei", "q", ["d"], params=params)


def test_any_status_but_200_is_retried_three_times_then_fails() -> None:
    seen, transport = recording(lambda request: httpx.Response(401, json={"error": "no"}))
    with pytest.raises(MilvusCallError) as caught:
        milvus_rerank_call("http://h:1", "tei", "q", ["d"], transport=transport, retry_wait=0)
    assert (caught.value.status, caught.value.attempts, len(seen)) == (401, 3, 3)


def test_an_answer_that_does_not_decode_is_not_retried() -> None:
    seen, transport = recording(lambda request: httpx.Response(200, content=b"not json"))
    with pytest.raises(MilvusCallError, match="unmarshal"):
        milvus_rerank_call("http://h:1", "tei", "q", ["d"], transport=transport, retry_wait=0)
    assert len(seen) == 1


def tei(*items: object) -> bytes:
    return json.dumps(list(items)).encode()


def test_tei_answer_must_score_every_document_exactly_once() -> None:
    good = tei({"index": 1, "score": 0.25}, {"index": 0, "score": 0.5})
    assert read_answer("tei", good, 2) == [0.5, 0.25]
    for bad in (
        tei({"index": 0, "score": 0.5}),  # one missing
        tei({"index": 0, "score": 0.5}, {"index": 0, "score": 0.5}),  # twice
        tei({"index": 0, "score": 0.5}, {"index": 2, "score": 0.5}),  # out of range
        tei({"index": 0, "score": 0.5}, {"index": -1, "score": 0.5}),
        tei({"index": 0, "score": 0.5}, {"index": 1, "score": 0.5}, {"index": 1, "score": 1}),
        b"null",
    ):
        with pytest.raises(MilvusCallError, match="get rerank scores failed"):
            read_answer("tei", bad, 2)


def test_vllm_position_rule_and_strict_rule() -> None:
    short = json.dumps({"results": [{"index": 1, "relevance_score": 0.5}]}).encode()
    # That vllm version places scores by sorted position: a short answer leaves zeros...
    assert read_answer("vllm", short, 2, strict=False) == [0.5, 0.0]
    with pytest.raises(MilvusCallError):  # ...which the exactly-once rule refuses.
        read_answer("vllm", short, 2)
    assert read_answer("vllm", b"null", 2, strict=False) == [0.0, 0.0]
    long = json.dumps({"results": [{"index": i, "relevance_score": 1} for i in range(3)]})
    with pytest.raises(MilvusCallError, match="index out of range"):
        read_answer("vllm", long.encode(), 2, strict=False)


@pytest.mark.parametrize(
    "raw",
    [
        b'[{"index": 0.0, "score": 1}]',  # an int field refuses a fraction
        b'[{"index": 1e0, "score": 1}]',
        b'[{"index": "0", "score": 1}]',
        b'[{"index": true, "score": 1}]',
        b'[{"index": 0, "score": "1"}]',
        b'[{"index": 0, "score": NaN}]',
        b'[{"index": 0, "score": 1e39}]',  # past float32
        b'{"index": 0, "score": 1}',  # an object for tei's array
        b"[1]",
    ],
)
def test_tei_decoding_follows_encoding_json(raw: bytes) -> None:
    with pytest.raises(MilvusCallError, match="unmarshal"):
        read_answer("tei", raw, 1)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"results": {}}',
        b'{"results": [], "id": 3}',
        b'{"results": [], "usage": {"total_tokens": 1.5}}',
        b"[]",
    ],
)
def test_vllm_decoding_follows_encoding_json(raw: bytes) -> None:
    with pytest.raises(MilvusCallError, match="unmarshal"):
        read_answer("vllm", raw, 0)


def test_decoding_leniencies_kept() -> None:
    # Keys match ignoring case, unknown keys are ignored, null is zero, scores are float32.
    raw = b'{"Results": [{"INDEX": 0, "Relevance_Score": 0.1, "document": {"text": "d"}}],'
    raw += b' "usage": {"total_tokens": null}, "extra": [1]}'
    (score,) = read_answer("vllm", raw, 1)
    assert score == pytest.approx(0.1, abs=1e-8) and score != 0.1


def test_function_params_run_as_milvus_runs_them() -> None:
    seen, transport = recording(echo_scores)
    params = {
        "reranker": "model",
        "provider": "tei",
        "queries": ["first", "second"],
        "endpoint": "http://h:1",
        "credential": "serve",
        "truncate": False,
    }
    with pytest.raises(MilvusCallError, match="credential serve not found"):
        milvus_function_call(params, ["d"], credentials={})
    scores = milvus_function_call(
        params, ["ab"], credentials={"serve": "k"}, query_index=1, transport=transport
    )
    assert scores == [2.0]
    assert seen[0].content == b'{"query":"second","texts":["ab"],"truncate":false}'
    assert seen[0].headers["authorization"] == "Bearer k"
