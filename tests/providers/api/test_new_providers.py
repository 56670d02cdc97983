"""The five newer APIs' own options, and Cohere-compatible servers through existing classes.

The shared wire-format, fault and cassette tests run over every provider in ``specs.SPECS``;
this file holds what is particular to one provider (routes, headers, per-model limits), and the
answer shapes of Infinity, Together, OpenVINO Model Server and TensorRT-LLM, each as its docs
show it, parsed by ``CohereReranker`` / ``VLLMReranker`` over ``httpx.MockTransport``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from milvus_rerank import (
    CohereReranker,
    ConfigurationError,
    DashScopeReranker,
    InvalidResponseError,
    NVIDIAReranker,
    PineconeReranker,
    SiliconFlowReranker,
    VLLMReranker,
    create_reranker,
)
from milvus_rerank.core.registry import provider_spec
from tests.providers.api.specs import KEY_VARS, SPECS

QUERY = "what is milvus"
DOCS = ["paris is in france", "milvus is a vector database", "milvus", "a database"]
KEY = "test-key-123"


def overlap(doc: str) -> float:
    return float(len(set(QUERY.split()) & set(doc.split())))


#: The ranking the fake answers below encode: by word overlap, ties in input order.
EXPECTED = sorted(range(len(DOCS)), key=lambda i: (-overlap(DOCS[i]), i))


def serve(
    answer: Callable[[list[str]], Any], seen: list[httpx.Request]
) -> tuple[httpx.Client, httpx.AsyncClient]:
    """Clients whose every request is recorded and answered with ``answer(documents)``."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        docs = body["documents"]
        return httpx.Response(200, json=answer(docs))

    transport = httpx.MockTransport(handle)
    return httpx.Client(transport=transport), httpx.AsyncClient(transport=transport)


@pytest.fixture(autouse=True)
def _no_keys_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)


# -- Cohere-compatible servers, by name ------------------------------------------------------


def infinity_answer(docs: list[str]) -> Any:
    """Infinity's ``ReRankResult`` (``infinity_emb/fastapi_schemas/pymodels.py``)."""
    return {
        "object": "rerank",
        "results": [{"relevance_score": overlap(d), "index": i} for i, d in enumerate(docs)],
        "model": "mixedbread-ai/mxbai-rerank-xsmall-v1",
        "usage": {"prompt_tokens": 24, "total_tokens": 24},
        "id": "infinity-6c1f3e0e-3a41-4f0b-9a0a-7c2d5f8e9b10",
        "created": 1764000000,
    }


def together_answer(docs: list[str]) -> Any:
    """Together's rerank reference (``docs.together.ai/reference/rerank-1``)."""
    order = sorted(range(len(docs)), key=lambda i: -overlap(docs[i]))
    return {
        "object": "rerank",
        "id": "9dfa1a09-5ebc-4a40-970f-586cb8f4ae47",
        "model": "salesforce/turboranker-0.8-3778-6328",
        "results": [
            {"index": i, "relevance_score": overlap(docs[i]), "document": {"text": None}}
            for i in order
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 0, "total_tokens": 120},
    }


def ovms_answer(docs: list[str]) -> Any:
    """OpenVINO Model Server's Cohere rerank endpoint (``ovms_docs_rest_api_rerank``)."""
    return {"results": [{"index": i, "relevance_score": overlap(d)} for i, d in enumerate(docs)]}


def trtllm_answer(docs: list[str]) -> Any:
    """``trtllm-serve rerank``'s Jina/vLLM-style answer on ``/rerank`` and ``/v1/rerank``."""
    order = sorted(range(len(docs)), key=lambda i: -overlap(docs[i]))
    return {
        "id": "rerank-0",
        "model": "Qwen/Qwen3-Reranker-0.6B",
        "usage": {"total_tokens": 40},
        "results": [{"index": i, "relevance_score": overlap(docs[i])} for i in order],
    }


SERVERS: dict[str, tuple[Callable[..., Any], dict[str, Any], str, Callable[[list[str]], Any]]] = {
    "infinity (vLLM class)": (
        VLLMReranker,
        {"base_url": "http://infinity:7997", "route": "/rerank", "max_batch": 2048},
        "http://infinity:7997/rerank",
        infinity_answer,
    ),
    "infinity --url-prefix /v1 (Cohere class)": (
        CohereReranker,
        {"base_url": "http://infinity:7997/v1"},
        "http://infinity:7997/v1/rerank",
        infinity_answer,
    ),
    "together": (
        CohereReranker,
        {"base_url": "https://api.together.xyz/v1", "api_key": KEY},
        "https://api.together.xyz/v1/rerank",
        together_answer,
    ),
    "openvino model server": (
        CohereReranker,
        {"base_url": "http://ovms:8000/v3"},
        "http://ovms:8000/v3/rerank",
        ovms_answer,
    ),
    "tensorrt-llm (vLLM class)": (
        VLLMReranker,
        {"base_url": "http://trtllm:8000"},
        "http://trtllm:8000/v1/rerank",
        trtllm_answer,
    ),
    "tensorrt-llm /v2 (Cohere class)": (
        CohereReranker,
        {"base_url": "http://trtllm:8000/v2"},
        "http://trtllm:8000/v2/rerank",
        trtllm_answer,
    ),
}


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_cohere_compatible_servers_rank_through_existing_classes(server: str) -> None:
    cls, options, url, answer = SERVERS[server]
    seen: list[httpx.Request] = []
    client, aclient = serve(answer, seen)
    reranker = cls("served-model", http_client=client, http_async_client=aclient, **options)
    results = reranker.rerank(QUERY, DOCS)
    assert [r.index for r in results] == EXPECTED
    assert [r.score for r in results] == [overlap(DOCS[i]) for i in EXPECTED]
    (request,) = seen
    assert str(request.url) == url
    body = json.loads(request.content)
    assert body["model"] == "served-model" and body["documents"] == DOCS
    if "api_key" in options:
        assert request.headers["authorization"] == f"Bearer {KEY}"
    else:
        assert "authorization" not in request.headers


async def test_together_async_and_top_n() -> None:
    cls, options, _, answer = SERVERS["together"]
    seen: list[httpx.Request] = []
    client, aclient = serve(answer, seen)
    reranker = cls("Salesforce/Llama-Rank-V1", http_async_client=aclient, **options)
    results = await reranker.arerank(QUERY, DOCS, top_n=2)
    assert [r.index for r in results] == EXPECTED[:2]
    client.close()


# -- NVIDIA ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "url"),
    [
        (
            {"api_key": KEY},
            "https://ai.api.nvidia.com/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking",
        ),
        (
            {"api_key": KEY, "model_name": "nvidia/nv-rerankqa-mistral-4b-v3"},
            "https://ai.api.nvidia.com/v1/retrieval/nvidia/reranking",
        ),
        ({"base_url": "http://nim:8000"}, "http://nim:8000/v1/ranking"),
        ({"base_url": "http://nim:8000/v1"}, "http://nim:8000/v1/ranking"),  # LangChain's form
    ],
)
def test_nvidia_routes(kwargs: dict[str, Any], url: str) -> None:
    assert NVIDIAReranker(**kwargs).url == url


def test_nvidia_key_is_required_only_for_the_hosted_api() -> None:
    with pytest.raises(ConfigurationError, match="NVIDIA_API_KEY"):
        NVIDIAReranker()
    assert NVIDIAReranker(base_url="http://nim:8000").api_key is None


def test_nvidia_ranks_by_raw_logits_negative_included() -> None:
    logits = [-8.25, 1.5, -1.25, -3.0]

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["query"] == {"text": QUERY}
        assert body["passages"] == [{"text": d} for d in DOCS]
        assert body["truncate"] == "NONE"
        order = sorted(range(4), key=lambda i: -logits[i])
        return httpx.Response(
            200, json={"rankings": [{"index": i, "logit": logits[i]} for i in order]}
        )

    client = httpx.Client(transport=httpx.MockTransport(handle))
    reranker = NVIDIAReranker(base_url="http://nim:8000", truncate="NONE", http_client=client)
    results = reranker.rerank(QUERY, DOCS)
    assert [(r.index, r.score) for r in results] == [(1, 1.5), (2, -1.25), (3, -3.0), (0, -8.25)]


def test_nvidia_truncate_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="truncate must be 'END' or 'NONE', got 'end'"):
        NVIDIAReranker(base_url="http://nim:8000", truncate="end")  # type: ignore[arg-type]


# -- Pinecone --------------------------------------------------------------------------------


def pinecone_reranker(seen: list[httpx.Request], **kwargs: Any) -> PineconeReranker:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        data = [{"index": i, "score": 0.5} for i in range(len(body["documents"]))]
        return httpx.Response(200, json={"model": body["model"], "data": data, "usage": {}})

    client = httpx.Client(transport=httpx.MockTransport(handle))
    return PineconeReranker(api_key=KEY, http_client=client, **kwargs)


def test_pinecone_sends_its_key_header_and_api_version_never_bearer() -> None:
    seen: list[httpx.Request] = []
    pinecone_reranker(seen).rerank(QUERY, DOCS)
    headers = seen[0].headers
    assert headers["api-key"] == KEY
    assert headers["x-pinecone-api-version"] == "2026-07"
    assert "authorization" not in headers
    seen.clear()
    pinecone_reranker(seen, api_version="2025-10").rerank(QUERY, DOCS)
    assert seen[0].headers["x-pinecone-api-version"] == "2025-10"


@pytest.mark.parametrize(
    ("model", "sizes"),
    [
        ("bge-reranker-v2-m3", [50, 100, 100]),
        ("pinecone-rerank-v0", [50, 100, 100]),
        ("cohere-rerank-3.5", [50, 200]),
    ],
)
def test_pinecone_chunks_at_each_models_documented_limit(model: str, sizes: list[int]) -> None:
    seen: list[httpx.Request] = []
    reranker = pinecone_reranker(seen, model_name=model, max_concurrency=1)
    assert len(reranker.rerank(QUERY, [f"d{i}" for i in range(250)])) == 250
    assert sorted(len(json.loads(r.content)["documents"]) for r in seen) == sizes


def test_pinecone_truncate_none_leaves_parameters_out() -> None:
    seen: list[httpx.Request] = []
    pinecone_reranker(seen, model_name="cohere-rerank-3.5", truncate=None).rerank(QUERY, DOCS)
    assert "parameters" not in json.loads(seen[0].content)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"truncate": "START"}, "truncate must be"),
        ({"api_version": ""}, "api_version must be a non-empty str"),
    ],
)
def test_pinecone_options_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        PineconeReranker(api_key=KEY, **kwargs)


# -- SiliconFlow and DashScope ---------------------------------------------------------------


def test_siliconflow_chunking_options_reach_the_body() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        n = len(json.loads(request.content)["documents"])
        return httpx.Response(
            200,
            json={"id": "x", "results": [{"index": i, "relevance_score": 0.1} for i in range(n)]},
        )

    client = httpx.Client(transport=httpx.MockTransport(handle))
    SiliconFlowReranker(
        api_key=KEY, max_chunks_per_doc=4, overlap_tokens=80, http_client=client
    ).rerank(QUERY, DOCS)
    body = json.loads(seen[0].content)
    assert (body["max_chunks_per_doc"], body["overlap_tokens"]) == (4, 80)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overlap_tokens": 81}, "overlap_tokens must be at most 80, got 81"),
        ({"overlap_tokens": -1}, "overlap_tokens must be an int >= 0"),
        ({"max_chunks_per_doc": 0}, "max_chunks_per_doc must be an int >= 1"),
    ],
)
def test_siliconflow_options_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SiliconFlowReranker(api_key=KEY, **kwargs)


@pytest.mark.parametrize(
    "answer",
    [
        {"code": "InvalidParameter", "message": "bad", "request_id": "r"},  # an error body, 200
        {"output": {"results": "nope"}},
        {"output": []},
        {"results": [{"index": 0, "relevance_score": 0.5}]},  # Cohere's shape is not DashScope's
    ],
)
def test_dashscope_answer_without_output_results_is_invalid(answer: Any) -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=answer)))
    reranker = DashScopeReranker(api_key=KEY, http_client=client)
    with pytest.raises(InvalidResponseError, match="dashscope"):
        reranker.rerank(QUERY, ["a"])


def test_dashscope_region_is_a_base_url() -> None:
    reranker = DashScopeReranker(api_key=KEY, base_url="https://dashscope-intl.aliyuncs.com")
    assert reranker.url == (
        "https://dashscope-intl.aliyuncs.com/api/v1/services/rerank/text-rerank/text-rerank"
    )


# -- the registry ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["mixedbread", "nvidia", "pinecone", "siliconflow", "dashscope"])
def test_registry_builds_each_new_provider(key: str) -> None:
    spec = provider_spec(key)
    assert spec.kind == "api" and not spec.needs_base_url
    reranker = create_reranker(key, api_key=KEY)
    assert isinstance(reranker, SPECS[key].cls)
    assert reranker.model_name == spec.default_model
    assert reranker.provider == key


# -- pymilvus-model's call shapes (issue 23, item 9) -------------------------------------------


@pytest.mark.parametrize("key", sorted(SPECS))
def test_every_api_reranker_takes_its_key_second_as_pymilvus_model_does(key: str) -> None:
    """``CohereRerankFunction("rerank-v3.5", "KEY")``: the key is the second positional."""
    from milvus_rerank.core.registry import reranker_class

    cls = reranker_class(key)
    reranker = cls("some-model", "sk-positional-key-123456", base_url="https://127.0.0.1:9")
    assert "sk-positional-key-123456" not in repr(reranker)
    assert reranker._api_key is not None  # the key was taken, not dropped


@pytest.mark.parametrize("value", [True, False])
def test_cohere_takes_return_documents_as_pymilvus_model_passes_it(value: bool) -> None:
    from milvus_rerank import CohereReranker

    reranker = CohereReranker("rerank-v3.5", "sk-k-123456789", return_documents=value)
    assert reranker.model_name == "rerank-v3.5"


def test_cohere_return_documents_must_be_a_bool() -> None:
    from milvus_rerank import CohereReranker, ConfigurationError

    with pytest.raises(ConfigurationError, match="return_documents must be a bool"):
        CohereReranker("rerank-v3.5", "sk-k-123456789", return_documents="yes")  # type: ignore[arg-type]
