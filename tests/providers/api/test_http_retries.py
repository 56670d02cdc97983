"""The HTTP layer's errors, retries and chunking, over httpx.MockTransport (no network)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest

from milvus_rerank import (
    AuthenticationError,
    ConfigurationError,
    InvalidResponseError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    VLLMReranker,
)
from milvus_rerank.providers.api.answers import parse_retry_after
from milvus_rerank.providers.api.execution import wait_within
from milvus_rerank.providers.api.slots import RequestSlots
from tests.fakes import FAST_RETRY, fast_retry
from tests.providers.api.mock_api import (
    DOCS,
    QUERY,
    Handler,
    answer_order,
    make,
    ok_handler,
    scores_for,
)
from tests.providers.api.specs import (
    SPECS,
    Spec,
    request_documents,
)

# -- errors and retries ----------------------------------------------------------------------


def scripted(
    spec: Spec,
    statuses: list[int],
    headers: dict[str, str] | None = None,
    calls: list[float] | None = None,
) -> Handler:
    script = list(statuses)

    def handle(request: httpx.Request) -> httpx.Response:
        if calls is not None:
            calls.append(time.monotonic())
        status = script.pop(0) if script else 200
        if status == 200:
            return ok_handler(spec)(request)
        return httpx.Response(
            status,
            json={"message": f"status {status}"},
            headers={"x-request-id": "req-42", **(headers or {})},
        )

    return handle


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthenticationError),
        (403, AuthenticationError),
        (400, ProviderError),
        (404, ProviderError),
        (422, ProviderError),
    ],
)
def test_client_errors_are_not_retried(spec: Spec, status: int, error: type[Exception]) -> None:
    calls: list[float] = []
    with pytest.raises(error) as info:
        make(spec, scripted(spec, [status] * 5, calls=calls)).rerank(QUERY, DOCS)
    assert len(calls) == 1
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert info.value.request_id == "req-42"  # type: ignore[attr-defined]
    assert f"status {status}" in str(info.value)
    assert not isinstance(info.value, (RateLimitError, ProviderUnavailableError))


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_then_succeed(spec: Spec, status: int) -> None:
    calls: list[float] = []
    results = make(spec, scripted(spec, [status, status], calls=calls)).rerank(QUERY, DOCS)
    assert len(calls) == 3
    assert [r.index for r in results] == [i for i, _ in answer_order(DOCS)]


async def test_async_retries_too(spec: Spec) -> None:
    calls: list[float] = []
    reranker = make(spec, scripted(spec, [503, 429], calls=calls))
    assert len(await reranker.arerank(QUERY, DOCS)) == len(DOCS)
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("status", "error"), [(429, RateLimitError), (503, ProviderUnavailableError)]
)
def test_retries_stop_at_max_retries(spec: Spec, status: int, error: type[Exception]) -> None:
    calls: list[float] = []
    with pytest.raises(error) as info:
        make(
            spec, scripted(spec, [status] * 10, calls=calls), retry=fast_retry(max_retries=2)
        ).rerank(QUERY, DOCS)
    assert len(calls) == 3
    assert info.value.status_code == status  # type: ignore[attr-defined]


def test_retry_after_is_honoured() -> None:
    spec = SPECS["cohere"]
    calls: list[float] = []
    handler = scripted(spec, [429], headers={"retry-after": "0.3"}, calls=calls)
    make(spec, handler).rerank(QUERY, DOCS)
    assert calls[1] - calls[0] >= 0.3


def test_rate_limit_error_carries_retry_after() -> None:
    spec = SPECS["cohere"]
    handler = scripted(spec, [429] * 3, headers={"retry-after": "0"})
    with pytest.raises(RateLimitError) as info:
        make(spec, handler, retry=fast_retry(max_retries=1)).rerank(QUERY, DOCS)
    assert info.value.retry_after == 0.0


def test_retry_after_past_the_deadline_gives_up_at_once() -> None:
    spec = SPECS["cohere"]
    calls: list[float] = []
    handler = scripted(spec, [429] * 3, headers={"retry-after": "60"}, calls=calls)
    started = time.monotonic()
    with pytest.raises(RateLimitError, match="deadline"):
        make(spec, handler, retry=fast_retry(deadline=2.0)).rerank(QUERY, DOCS)
    assert time.monotonic() - started < 1.0
    assert len(calls) == 1


def test_connection_errors_are_retried_and_typed(spec: Spec) -> None:
    attempts = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ProviderUnavailableError, match="could not be reached") as info:
        make(spec, refuse, retry=fast_retry(max_retries=2)).rerank(QUERY, DOCS)
    assert len(attempts) == 3
    assert info.value.status_code is None


def test_read_timeouts_are_retried() -> None:
    spec = SPECS["jina"]
    script = [True]

    def slow(request: httpx.Request) -> httpx.Response:
        if script and script.pop():
            raise httpx.ReadTimeout("timed out", request=request)
        return ok_handler(spec)(request)

    assert len(make(spec, slow).rerank(QUERY, DOCS)) == len(DOCS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (None, None),
        ("", None),
        ("soon", None),
        ("-4", 0.0),
        ("nan", None),
    ],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)


# -- chunking --------------------------------------------------------------------------------


def test_long_lists_are_chunked_and_merged_by_index(spec: Spec) -> None:
    docs = [f"doc {i} milvus" if i % 7 == 0 else f"doc {i}" for i in range(23)]
    seen: list[httpx.Request] = []
    results = make(spec, ok_handler(spec, seen), max_batch=5).rerank(QUERY, docs, top_n=6)
    sizes = sorted(len(request_documents(json.loads(r.content))) for r in seen)
    assert sizes == [3, 5, 5, 5, 5]
    expected = sorted(range(len(docs)), key=lambda i: (-scores_for(docs)[i], i))[:6]
    assert [r.index for r in results] == expected
    assert [r.text for r in results] == [docs[i] for i in expected]


async def test_async_chunks_run_concurrently() -> None:
    spec = SPECS["vllm"]
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        import asyncio

        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        with lock:
            in_flight -= 1
        return ok_handler(spec)(request)

    transport = httpx.MockTransport(handle)
    reranker = spec.cls(
        **spec.kwargs,
        max_batch=10,
        max_concurrency=4,
        http_async_client=httpx.AsyncClient(transport=transport),
    )
    started = time.monotonic()
    results = await reranker.arerank(QUERY, [f"d{i}" for i in range(100)])
    assert len(results) == 100
    assert peak == 4  # bounded by max_concurrency
    assert time.monotonic() - started < 10 * 0.05  # not sequential


def test_sync_chunks_run_concurrently() -> None:
    spec = SPECS["vllm"]
    state = {"in": 0, "peak": 0}
    lock = threading.Lock()

    def handle(request: httpx.Request) -> httpx.Response:
        with lock:
            state["in"] += 1
            state["peak"] = max(state["peak"], state["in"])
        time.sleep(0.05)
        with lock:
            state["in"] -= 1
        return ok_handler(spec)(request)

    reranker = make(spec, handle, max_batch=10, max_concurrency=3)
    assert len(reranker.rerank(QUERY, [f"d{i}" for i in range(60)])) == 60
    assert state["peak"] == 3


def test_a_failing_chunk_fails_the_call(spec: Spec) -> None:
    handler = scripted(spec, [200, 400])
    with pytest.raises(ProviderError):
        make(spec, handler, max_batch=2, max_concurrency=1).rerank(QUERY, DOCS)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_chunk_handed_a_slot_as_the_call_fails_stops_too(mode: str) -> None:
    # The failing chunk's slot goes to the chunk waiting for one in the loop turn the call
    # cancels it; on Python 3.11 asyncio.wait_for lost that cancellation (CPython gh-86296),
    # so the failed call sent that chunk and waited for its answer (1.5 s here).
    seen: list[list[str]] = []

    async def handle_async(request: httpx.Request) -> httpx.Response:
        docs = request_documents(json.loads(request.content))
        seen.append(docs)
        if docs == ["fail"]:
            return httpx.Response(400, json={"message": "bad chunk"})
        await asyncio.sleep(1.5)
        return ok_handler(SPECS["vllm"])(request)

    def handle_sync(request: httpx.Request) -> httpx.Response:
        docs = request_documents(json.loads(request.content))
        seen.append(docs)
        if docs == ["fail"]:
            return httpx.Response(400, json={"message": "bad chunk"})
        time.sleep(1.5)
        return ok_handler(SPECS["vllm"])(request)

    client: dict[str, Any] = (
        {"http_client": httpx.Client(transport=httpx.MockTransport(handle_sync))}
        if mode == "sync"
        else {"http_async_client": httpx.AsyncClient(transport=httpx.MockTransport(handle_async))}
    )
    reranker = VLLMReranker(
        base_url="http://vllm:8000", max_batch=1, max_concurrency=2, retry=FAST_RETRY, **client
    )
    started = time.monotonic()
    with pytest.raises(ProviderError, match="HTTP 400"):
        if mode == "sync":
            await asyncio.to_thread(reranker.rerank, QUERY, ["fail", "slow 1", "slow 2"])
        else:
            await reranker.arerank(QUERY, ["fail", "slow 1", "slow 2"])
    took = time.monotonic() - started
    await asyncio.sleep(0.1)
    assert took < 0.7
    assert ["slow 2"] not in seen  # the third chunk never went out


async def test_wait_within_never_loses_the_callers_cancellation() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[int] = loop.create_future()

    async def inner() -> int:
        return await answer

    outer = asyncio.create_task(wait_within(inner(), 10))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the inner task waits on ``answer``
    answer.set_result(1)
    await asyncio.sleep(0)  # the inner task has finished; the outer one is not woken yet
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer  # asyncio.wait_for on 3.11 returned 1 here
    with pytest.raises(asyncio.TimeoutError):
        await wait_within(asyncio.sleep(5), 0.01)
    assert await wait_within(asyncio.sleep(0, "done"), 1) == "done"


async def test_a_slot_reaching_a_cancelled_waiter_is_passed_on() -> None:
    slots = RequestSlots(1)
    assert await slots.acquire(1)
    waiting = asyncio.create_task(slots.acquire(5))
    await asyncio.sleep(0)
    slots.release()  # granted: delivered on the next loop turn
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slots.free == 1
    assert await slots.acquire(1)
    assert not await slots.acquire(0.01)  # none came within the timeout
    slots.release()
    assert slots.free == 1


@pytest.mark.parametrize(
    ("option", "given", "message"),
    [
        ("http_client", "async", "http_client must be an httpx.Client, got AsyncClient; an "),
        ("http_client", "str", "http_client must be an httpx.Client, got str$"),
        ("http_async_client", "sync", "http_async_client must be an httpx.AsyncClient, got Client"),
        ("http_async_client", "str", "http_async_client must be an httpx.AsyncClient, got str$"),
    ],
)
async def test_an_injected_client_of_the_wrong_type_is_refused(
    option: str, given: str, message: str
) -> None:
    # Attack F3: before, construction passed and every call failed with a raw AttributeError
    # or TypeError (and an un-awaited coroutine for a swapped AsyncClient).
    clients = {"async": httpx.AsyncClient(), "sync": httpx.Client(), "str": "x"}
    with pytest.raises(ConfigurationError, match=message):
        VLLMReranker(base_url="http://vllm:8000", **{option: clients[given]})
    await clients["async"].aclose()  # type: ignore[union-attr]
    clients["sync"].close()  # type: ignore[union-attr]


async def test_owned_clients_close_and_come_back() -> None:
    spec = SPECS["vllm"]
    reranker = spec.cls(**spec.kwargs)
    client = (await reranker._clients.loop_state()).client
    await reranker.aclose()
    assert client.is_closed
    assert (await reranker._clients.loop_state()).client is not client
    await reranker.aclose()


async def test_async_context_manager_closes_its_client() -> None:
    spec = SPECS["vllm"]
    async with spec.cls(**spec.kwargs) as reranker:
        state = await reranker._clients.loop_state()
    assert state.client is not None and state.client.is_closed


def test_injected_clients_are_left_open(spec: Spec) -> None:
    reranker = make(spec, ok_handler(spec))
    with reranker:
        reranker.rerank(QUERY, DOCS)
    assert reranker._clients.sync_client is not None and not reranker._clients.sync_client.is_closed


@pytest.mark.parametrize("route", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_vllm_routes(route: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"results": [{"index": 0, "relevance_score": 0.5}]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    reranker = VLLMReranker(base_url="http://vllm:8000", route=route, http_client=client)
    assert [r.score for r in reranker.rerank("q", ["d"])] == [0.5]
    assert seen == [route]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"route": "/v3/rerank"}, "route must be one of"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens must be an int >= 1, got 0"),
        ({"truncate_prompt_tokens": "64"}, "got '64'"),
    ],
)
def test_vllm_options_are_checked(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        VLLMReranker(base_url="http://vllm:8000", **kwargs)  # type: ignore[arg-type]


def _template_server(seen: list[dict[str, Any]]) -> httpx.MockTransport:
    """Scores each document as sent by its length, so the formatted text decides the order."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        results = [
            {"index": i, "relevance_score": 1 / len(d)} for i, d in enumerate(body["documents"])
        ]
        return httpx.Response(200, json={"results": results})

    return httpx.MockTransport(handler)


def _templated(seen: list[dict[str, Any]], **kwargs: Any) -> VLLMReranker:
    transport = _template_server(seen)
    return VLLMReranker(
        base_url="http://vllm:8000",
        query_template="Q[{query}]{{q}}",
        document_template="{{d}}D[{document}]",
        http_client=httpx.Client(transport=transport),
        http_async_client=httpx.AsyncClient(transport=transport),
        **kwargs,
    )


def test_vllm_templates_format_what_is_sent_not_what_is_returned() -> None:
    seen: list[dict[str, Any]] = []
    docs = ["bb", "a", "{document} and {query}", "ccc"]
    before = list(docs)
    results = _templated(seen, max_batch=3).rerank("q {0}", docs)
    assert docs == before
    assert [b["query"] for b in seen] == ["Q[q {0}]{q}"] * 2
    sent = [d for b in seen for d in b["documents"]]
    assert sent == ["{d}D[bb]", "{d}D[a]", "{d}D[{document} and {query}]", "{d}D[ccc]"]
    assert [r.index for r in results] == [1, 0, 3, 2]  # shortest formatted text first
    assert [r.text for r in results] == [docs[r.index] for r in results]
    assert [r.score for r in results] == [1 / len(sent[r.index]) for r in results]


async def test_vllm_templates_apply_to_async_calls_too() -> None:
    seen: list[dict[str, Any]] = []
    results = await _templated(seen).arerank("q", ["bb", "a"], top_n=1)
    assert seen == [{"query": "Q[q]{q}", "documents": ["{d}D[bb]", "{d}D[a]"]}]
    assert [(r.index, r.text) for r in results] == [(1, "a")]


def test_vllm_templates_show_in_repr_only_when_set() -> None:
    text = repr(_templated([]))
    assert "query_template='Q[{query}]{{q}}'" in text
    assert "document_template='{{d}}D[{document}]'" in text
    assert "template" not in repr(VLLMReranker(base_url="http://vllm:8000"))


@pytest.mark.parametrize(
    ("option", "template", "match"),
    [
        ("query_template", 3, "query_template must be a str with {query}, got 3"),
        ("query_template", "no field", "must hold {query} and no other field, got 'no field'"),
        ("query_template", "{document}", r"it has \{document\}"),
        ("document_template", "{query}: {document}", r"it has \{query\}"),
        ("document_template", "{document!r}", r"it has \{document!r\}"),
        ("document_template", "{document:>9}", r"it has \{document:>9\}"),
        ("query_template", "{query} {}", r"it has \{\}"),
        ("query_template", "{query.upper}", r"it has \{query.upper\}"),
        ("query_template", "json {query}: {", "'json {query}: {' is not a format string"),
        ("document_template", "}{document}", "double a literal brace"),
    ],
)
def test_vllm_templates_are_checked(option: str, template: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        VLLMReranker(base_url="http://vllm:8000", **{option: template})


@pytest.mark.parametrize("target", ["milvus", "milvus-lite"])
@pytest.mark.parametrize("option", ["query_template", "document_template"])
def test_milvus_never_gets_a_templated_vllm(target: str, option: str) -> None:
    template = "{query}!" if option == "query_template" else "{document}!"
    reranker = VLLMReranker(base_url="http://vllm:8000", **{option: template})
    with pytest.raises(ConfigurationError, match="milvus-rerank serve --reranker qwen3"):
        reranker.milvus_function_params(target)  # type: ignore[arg-type]


def test_qwen3_vllm_templates_write_the_model_card_prompt() -> None:
    from milvus_rerank import Qwen3Reranker

    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
        'Query and the Instruct provided. Note that the answer can only be "yes" or '
        '"no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    card = "Given a web search query, retrieve relevant passages that answer the query"
    for instruction, written in [(None, card), ("Find {the} code }{", "Find {the} code }{")]:
        seen: list[dict[str, Any]] = []
        transport = _template_server(seen)
        reranker = VLLMReranker(
            base_url="http://vllm:8000",
            http_client=httpx.Client(transport=transport),
            **Qwen3Reranker.vllm_templates(instruction),
        )
        reranker.rerank("what {x}?", ["doc {y}", "two"])
        (body,) = seen
        assert [body["query"] + d for d in body["documents"]] == [
            f"{prefix}<Instruct>: {written}\n<Query>: what {{x}}?\n<Document>: {d}{suffix}"
            for d in ("doc {y}", "two")
        ]


def test_qwen3_vllm_templates_check_the_instruction() -> None:
    from milvus_rerank import Qwen3Reranker

    with pytest.raises(ConfigurationError, match="instruction must be a str or None, got 7"):
        Qwen3Reranker.vllm_templates(7)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "hint"),
    [
        ("model", "model_name="),
        ("max_retries", "RetryPolicy"),
        ("deadline", "RetryPolicy"),
        ("foo", ""),
    ],
)
def test_unknown_options_are_typed_and_hide_values(option: str, hint: str) -> None:
    from milvus_rerank import CohereReranker, ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        CohereReranker(api_key="k" * 20, **{option: "sk-should-not-appear"})
    assert repr(option) in str(info.value) and hint in str(info.value)
    assert "sk-should-not-appear" not in str(info.value)


@pytest.mark.parametrize("target", ["bogus", "milvus_lite", "MILVUS", 3])
def test_milvus_function_params_checks_the_target(target: object) -> None:
    from milvus_rerank import CohereReranker, ConfigurationError

    with pytest.raises(ConfigurationError, match="target must be"):
        CohereReranker(api_key="k" * 20).milvus_function_params(target)  # type: ignore[arg-type]


def test_milvus_lite_takes_no_credential_name() -> None:
    from milvus_rerank import CohereReranker, ConfigurationError

    with pytest.raises(ConfigurationError, match="Milvus Lite has no milvus.yaml"):
        CohereReranker(api_key="k" * 20).milvus_function_params("milvus-lite", credential="c")


def test_a_chunk_answer_error_names_the_chunk_and_global_positions() -> None:
    import httpx

    from milvus_rerank import CohereReranker

    def handler(request: httpx.Request) -> httpx.Response:
        docs = json.loads(request.content)["documents"]
        # Every chunk drops its last document.
        results = [{"index": i, "relevance_score": 0.5} for i in range(len(docs) - 1)]
        return httpx.Response(200, json={"id": "x", "results": results})

    reranker = CohereReranker(
        api_key="k" * 20,
        max_batch=4,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(InvalidResponseError) as info:
        reranker.rerank("q", [f"d{i}" for i in range(8)])
    message = str(info.value)
    assert "(the chunk of documents[" in message
    assert "missing documents[3]" in message or "missing documents[7]" in message
