"""What each API reranker reports it consumed (``RerankResponse.usage``), over mock transports.

Each provider's documented usage field (``specs.Spec.usage``) is read per answer, summed over
a call's chunks, on the sync and async paths; a malformed field is None and never fails the
ranking, and its value never reaches a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from milvus_rerank import InvalidResponseError, Usage
from milvus_rerank.providers.api.contract import HTTPReranker
from milvus_rerank.providers.api.usage import MAX_USAGE_COUNT
from tests.fakes import FAST_RETRY, FaultPlan, FaultServer, api_reranker, fake_score
from tests.providers.api.specs import SPECS, Spec, reported_usage, request_documents, request_query

QUERY = "what is milvus"
DOCS = ["paris is in france", "milvus is a vector database", "what is a database", "milvus"]
KEY = "sk-live-" + "Q9w8E7r6" * 4
REPORTING = sorted(name for name, spec in SPECS.items() if spec.usage)

Rewrite = Callable[[Any], Any]


def order(query: str, docs: list[str]) -> list[tuple[int, float]]:
    return sorted(enumerate(fake_score(query, d) for d in docs), key=lambda p: -p[1])


def expected_indices(docs: list[str]) -> list[int]:
    return [i for i, _ in sorted(order(QUERY, docs), key=lambda p: (-p[1], p[0]))]


def serve(
    spec: Spec, rewrite: Rewrite | None = None, raw: Callable[[bytes], bytes] | None = None
) -> tuple[Callable[[httpx.Request], httpx.Response], list[Any]]:
    """A handler answering ``spec``'s documented format, optionally rewritten; records answers."""
    sent: list[Any] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        answer = spec.answer(order(request_query(body), request_documents(body)))
        if rewrite is not None:
            answer = rewrite(answer)
        sent.append(answer)
        content = json.dumps(answer).encode()
        if raw is not None:
            content = raw(content)
        return httpx.Response(200, content=content, headers={"content-type": "application/json"})

    return handle, sent


def make(spec: Spec, handler: Any, **kwargs: Any) -> HTTPReranker:
    transport = httpx.MockTransport(handler)
    options = {**spec.kwargs, "api_key": KEY, "retry": FAST_RETRY, **kwargs}
    return spec.cls(
        http_client=httpx.Client(transport=transport),
        http_async_client=httpx.AsyncClient(transport=transport),
        **options,
    )


def set_path(answer: Any, path: tuple[str, ...], value: Any) -> Any:
    """``answer`` with ``value`` at ``path`` (dicts made on the way)."""
    node = answer
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return answer


@pytest.fixture(params=sorted(SPECS))
def spec(request: pytest.FixtureRequest) -> Spec:
    return SPECS[request.param]


def test_each_answer_reports_its_documented_usage(spec: Spec) -> None:
    handler, sent = serve(spec)
    response = make(spec, handler).rerank_response(QUERY, DOCS)
    assert [r.index for r in response.results] == expected_indices(DOCS)
    assert response.usage == Usage(**reported_usage(spec, sent))
    assert response.usage.requests == 1
    if spec.name in ("cohere", "voyage", "jina", "vllm", "mixedbread", "pinecone"):
        assert response.usage != Usage(requests=1)  # their documented answers report it


async def test_async_path_reports_the_same(spec: Spec) -> None:
    handler, sent = serve(spec)
    response = await make(spec, handler).arerank_response(QUERY, DOCS)
    assert response.usage == Usage(**reported_usage(spec, sent))


@pytest.mark.parametrize("asynchronous", [False, True])
def test_chunks_are_summed(spec: Spec, asynchronous: bool) -> None:
    handler, sent = serve(spec)
    reranker = make(spec, handler, max_batch=3)
    docs = DOCS * 2  # 8 documents in 3 chunks
    if asynchronous:
        response = asyncio.run(reranker.arerank_response(QUERY, docs))
    else:
        response = reranker.rerank_response(QUERY, docs)
    assert len(sent) == 3 and response.usage.requests == 3
    assert response.usage == Usage(**reported_usage(spec, sent))
    single = Usage(**reported_usage(spec, sent[:1]))
    for name in ("tokens", "search_units", "rerank_units"):
        one = getattr(single, name)
        assert getattr(response.usage, name) == (None if one is None else 3 * one)


@pytest.mark.parametrize("provider", REPORTING)
def test_a_chunk_without_usage_makes_the_field_unreported(provider: str) -> None:
    spec = SPECS[provider]
    (path, *_), *_ = spec.usage.values()
    calls = []

    def drop_on_second(answer: Any) -> Any:
        calls.append(1)
        return set_path(answer, path, None) if len(calls) == 2 else answer

    handler, _ = serve(spec, drop_on_second)
    usage = make(spec, handler, max_batch=2).rerank_response(QUERY, DOCS).usage
    assert usage == Usage(requests=2)  # a partial sum would pass for the whole call's count


BAD_VALUES = [
    "12",
    True,
    -1,
    1.5,
    [3],
    {"n": 3},
    MAX_USAGE_COUNT + 1,
    10**400,
    f"{KEY} leaked",
]


@pytest.mark.parametrize("value", BAD_VALUES, ids=lambda v: f"{type(v).__name__}-{str(v)[:12]}")
@pytest.mark.parametrize("provider", REPORTING)
def test_a_malformed_usage_field_is_none_and_never_fails_the_ranking(
    provider: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    spec = SPECS[provider]
    field, (path, *_) = next(iter(spec.usage.items()))
    handler, _ = serve(spec, lambda a: set_path(a, path, value))
    with caplog.at_level(logging.DEBUG, logger="milvus_rerank.http"):
        response = make(spec, handler).rerank_response(QUERY, DOCS)
    assert [r.index for r in response.results] == expected_indices(DOCS)
    assert getattr(response.usage, field) is None and response.usage.requests == 1
    assert ".".join(path) in caplog.text  # said at DEBUG, by name
    assert KEY not in caplog.text and "leaked" not in caplog.text and "12" not in caplog.text


@pytest.mark.parametrize("provider", REPORTING)
def test_a_malformed_usage_object_is_none(provider: str, caplog: pytest.LogCaptureFixture) -> None:
    spec = SPECS[provider]
    field, (path, *_) = next(iter(spec.usage.items()))
    handler, _ = serve(spec, lambda a: set_path(a, path[:1], f"bearer {KEY}"))
    with caplog.at_level(logging.DEBUG, logger="milvus_rerank.http"):
        usage = make(spec, handler).rerank_response(QUERY, DOCS).usage
    assert getattr(usage, field) is None
    assert KEY not in caplog.text and path[0] in caplog.text


def test_a_count_too_long_for_python_still_ranks(caplog: pytest.LogCaptureFixture) -> None:
    spec = SPECS["jina"]
    digits = "9" * 5000  # past int's 4300-digit parsing limit: the JSON itself is valid
    huge = b'"total_tokens": ' + digits.encode()
    handler, _ = serve(spec, raw=lambda c: c.replace(b'"total_tokens": 42', huge))
    with caplog.at_level(logging.DEBUG, logger="milvus_rerank.http"):
        response = make(spec, handler).rerank_response(QUERY, DOCS)
    assert [r.index for r in response.results] == expected_indices(DOCS)
    assert response.usage == Usage(requests=1)
    assert digits[:50] not in caplog.text


def test_a_score_too_long_for_python_is_still_an_invalid_answer() -> None:
    spec = SPECS["jina"]
    huge = b'"relevance_score": ' + b"9" * 5000 + b', "was": '
    handler, _ = serve(spec, raw=lambda c: c.replace(b'"relevance_score": ', huge, 1))
    with pytest.raises(InvalidResponseError, match="not finite"):
        make(spec, handler).rerank(QUERY, DOCS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (42.0, 42), (MAX_USAGE_COUNT, MAX_USAGE_COUNT), (2**62, 2**62)],
)
def test_counts_at_the_edges(value: Any, expected: int) -> None:
    spec = SPECS["voyage"]
    handler, _ = serve(spec, lambda a: set_path(a, ("usage", "total_tokens"), value))
    usage = make(spec, handler, max_batch=2).rerank_response(QUERY, DOCS).usage
    # exact, however large (ints are summed, not floats), up to the bound each field has
    assert usage.tokens == (2 * expected if 2 * expected <= MAX_USAGE_COUNT else None)


@pytest.mark.parametrize(
    ("provider", "path"),
    [("cohere", ("meta", "tokens")), ("siliconflow", ("tokens",))],
)
def test_input_plus_output_tokens_past_the_bound_are_unreported(
    provider: str, path: tuple[str, ...]
) -> None:
    spec = SPECS[provider]
    counts = {"input_tokens": MAX_USAGE_COUNT, "output_tokens": 1}
    handler, _ = serve(spec, lambda a: set_path(a, path, counts))
    assert make(spec, handler).rerank_response(QUERY, DOCS).usage.tokens is None
    counts = {"input_tokens": MAX_USAGE_COUNT - 1, "output_tokens": 1}
    handler, _ = serve(spec, lambda a: set_path(a, path, counts))
    assert make(spec, handler).rerank_response(QUERY, DOCS).usage.tokens == MAX_USAGE_COUNT


def test_cohere_reads_tokens_where_it_or_a_compatible_server_reports_them() -> None:
    spec = SPECS["cohere"]

    def with_tokens(answer: Any) -> Any:
        answer["meta"]["tokens"] = {"input_tokens": 30, "output_tokens": 0}
        return answer

    handler, _ = serve(spec, with_tokens)
    assert make(spec, handler).rerank_response(QUERY, DOCS).usage == Usage(
        tokens=30, search_units=1, requests=1
    )

    def like_vllm(answer: Any) -> Any:  # vLLM's /v2/rerank: Cohere's results, vLLM's usage
        del answer["meta"]
        answer["usage"] = {"prompt_tokens": 17, "total_tokens": 17}
        return answer

    handler, _ = serve(spec, like_vllm)
    assert make(spec, handler).rerank_response(QUERY, DOCS).usage == Usage(tokens=17, requests=1)


def test_vllm_takes_null_as_unreported() -> None:
    spec = SPECS["vllm"]  # what milvus-rerank serve answers: it counts no tokens
    handler, _ = serve(spec, lambda a: {**a, "usage": {"total_tokens": None, "documents": 4}})
    assert make(spec, handler).rerank_response(QUERY, DOCS).usage == Usage(requests=1)


def test_a_failing_usage_parser_never_fails_the_ranking(caplog: pytest.LogCaptureFixture) -> None:
    spec = SPECS["jina"]

    class Broken(spec.cls):  # type: ignore[misc,name-defined]
        def _usage(self, body: Any) -> Usage:
            raise KeyError(KEY)

    handler, _ = serve(spec)
    transport = httpx.MockTransport(handler)
    reranker = Broken(api_key=KEY, http_client=httpx.Client(transport=transport))
    with caplog.at_level(logging.DEBUG, logger="milvus_rerank.http"):
        response = reranker.rerank_response(QUERY, DOCS)
    assert [r.index for r in response.results] == expected_indices(DOCS)
    assert response.usage == Usage(requests=1)
    assert "KeyError" in caplog.text and KEY not in caplog.text


def test_retries_are_not_counted_as_requests(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.script = ["503", "ok", "reset", "ok"]
    with api_reranker("voyage", fault_server.url, max_batch=2) as reranker:
        response = reranker.rerank_response(QUERY, DOCS)  # the owned client's path
    assert len(fault_plan.requests) == 4
    assert response.usage == Usage(tokens=20, requests=2)  # the fake server reports 10 each


async def test_owned_async_client_sums_too(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    async with api_reranker("cohere", fault_server.url, max_batch=2) as reranker:
        response = await reranker.arerank_response(QUERY, DOCS * 2)
    assert len(fault_plan.requests) == 4
    assert response.usage == Usage(search_units=4, requests=4)


def tei_counting(header: str | None) -> Callable[[httpx.Request], httpx.Response]:
    """TEI's answer (a bare array) with ``header`` as its ``x-compute-tokens``, as TEI sends."""
    handle, _ = serve(SPECS["tei"])

    def counted(request: httpx.Request) -> httpx.Response:
        answer = handle(request)
        if header is not None:
            answer.headers["x-compute-tokens"] = header
        return answer

    return counted


@pytest.mark.parametrize("asynchronous", [False, True])
def test_tei_reads_tokens_from_its_x_compute_tokens_header(asynchronous: bool) -> None:
    reranker = make(SPECS["tei"], tei_counting("57"), max_batch=3)
    docs = DOCS * 2  # 3 chunks, each answered with 57 tokens
    if asynchronous:
        response = asyncio.run(reranker.arerank_response(QUERY, docs))
    else:
        response = reranker.rerank_response(QUERY, docs)
    assert [r.index for r in response.results] == expected_indices(docs)
    assert response.usage == Usage(tokens=3 * 57, requests=3)


@pytest.mark.parametrize("header", [None, "", "-3", "4x2", "1e3", "9" * 20, " "])
def test_a_missing_or_bad_tei_token_header_is_unreported(
    header: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="milvus_rerank")
    response = make(SPECS["tei"], tei_counting(header)).rerank_response(QUERY, DOCS)
    assert [r.index for r in response.results] == expected_indices(DOCS)
    assert response.usage == Usage(requests=1)
    if header and header.strip():
        assert header.strip() not in caplog.text  # logged by type only
