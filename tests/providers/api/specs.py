"""Each API provider's documented wire format, written from its API reference.

These are the independent statement of what must go over the wire; tests compare what our
clients send and parse against them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from milvus_rerank import (
    CohereReranker,
    DashScopeReranker,
    HTTPReranker,
    JinaReranker,
    MixedbreadReranker,
    NVIDIAReranker,
    PineconeReranker,
    SiliconFlowReranker,
    TEIReranker,
    VLLMReranker,
    VoyageReranker,
)


@dataclass(frozen=True)
class Spec:
    name: str
    cls: type[HTTPReranker]
    kwargs: dict[str, Any]
    host: str
    path: str
    env: str | None
    request: Callable[[str, list[str]], dict[str, Any]]
    answer: Callable[[list[tuple[int, float]]], Any]
    #: The header that carries the key, and its value for a key (``{key}``).
    auth_header: str = "authorization"
    auth_value: str = "Bearer {key}"
    #: Where the answer reports usage: ``Usage`` field -> the paths whose counts it adds up.
    usage: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)

    def auth(self, key: str) -> str:
        """The documented value of ``auth_header`` for ``key``."""
        return self.auth_value.format(key=key)


def request_query(body: dict[str, Any]) -> str:
    """The query text of any provider's request body."""
    query = body.get("query")
    if isinstance(query, dict):  # NVIDIA
        return str(query["text"])
    if query is None and isinstance(body.get("input"), dict):  # DashScope
        return str(body["input"]["query"])
    return str(query or "")


def request_documents(body: dict[str, Any]) -> list[str]:
    """The document texts of any provider's request body, in order."""
    if "texts" in body:  # TEI
        return list(body["texts"])
    if "passages" in body:  # NVIDIA
        return [p["text"] for p in body["passages"]]
    if isinstance(body.get("input"), dict):  # DashScope
        return list(body["input"]["documents"])
    if isinstance(body.get("input"), list):  # Mixedbread
        return list(body["input"])
    return [d["text"] if isinstance(d, dict) else d for d in body.get("documents", [])]


def answer_items(answer: Any) -> Any:
    """The per-document results inside any provider's answer."""
    if isinstance(answer, list):
        return answer
    for key in ("results", "data", "rankings"):
        if key in answer:
            return answer[key]
    return (answer.get("output") or {}).get("results")


#: Where each provider's answer puts a result's score.
SCORE_KEYS = ("relevance_score", "score", "logit")


def score_key(item: dict[str, Any]) -> str:
    """The score field of one result."""
    return next(key for key in SCORE_KEYS if key in item)


def reported_usage(spec: Spec, answers: list[Any]) -> dict[str, int | None]:
    """Each ``Usage`` field as the documented paths of ``answers`` add up (None if any lacks one).

    Fields the provider does not document are None; ``requests`` is one per answer.
    """
    out: dict[str, int | None] = {
        "tokens": None,
        "search_units": None,
        "rerank_units": None,
        "requests": len(answers),
    }
    for name, paths in spec.usage.items():
        total: int | None = 0
        for answer in answers:
            for path in paths:
                value: Any = answer
                for key in path:
                    value = value.get(key) if isinstance(value, dict) else None
                if value is None or total is None:
                    total = None
                else:
                    total += value
        out[name] = total
    return out


def _cohere_answer(order: list[tuple[int, float]]) -> Any:
    return {
        "id": "07734bd2-2473-4f07-94e1-0d9f0e6843cf",
        "results": [{"index": i, "relevance_score": s} for i, s in order],
        "meta": {
            "api_version": {"version": "2", "is_experimental": False},
            "billed_units": {"search_units": 1},
        },
    }


def _voyage_answer(order: list[tuple[int, float]]) -> Any:
    return {
        "object": "list",
        "data": [{"index": i, "relevance_score": s} for i, s in order],
        "model": "rerank-2.5",
        "usage": {"total_tokens": 42},
    }


def _results_answer(order: list[tuple[int, float]]) -> Any:
    return {
        "model": "m",
        "usage": {"total_tokens": 42},
        "results": [{"index": i, "relevance_score": s} for i, s in order],
    }


def _mixedbread_answer(order: list[tuple[int, float]]) -> Any:
    return {
        "object": "list",
        "model": "mixedbread-ai/mxbai-rerank-large-v2",
        "data": [{"index": i, "score": s, "object": "rank_result"} for i, s in order],
        "usage": {"prompt_tokens": 42, "total_tokens": 42},
        "top_k": len(order),
        "return_input": False,
    }


def _nvidia_answer(order: list[tuple[int, float]]) -> Any:
    return {"rankings": [{"index": i, "logit": s} for i, s in order]}


def _pinecone_answer(order: list[tuple[int, float]]) -> Any:
    return {
        "model": "bge-reranker-v2-m3",
        "data": [{"index": i, "score": s} for i, s in order],
        "usage": {"rerank_units": 1},
    }


def _siliconflow_answer(order: list[tuple[int, float]]) -> Any:
    return {
        "id": "0193a8f1c2d34e5f",
        "results": [{"index": i, "relevance_score": s} for i, s in order],
        "tokens": {"input_tokens": 42, "output_tokens": 0},
    }


def _dashscope_answer(order: list[tuple[int, float]]) -> Any:
    return {
        "output": {"results": [{"index": i, "relevance_score": s} for i, s in order]},
        "usage": {"total_tokens": 42},
        "request_id": "4b3c2a1d-0e9f-4a8b-b7c6-d5e4f3a2b1c0",
    }


SPECS: dict[str, Spec] = {
    "cohere": Spec(
        "cohere",
        CohereReranker,
        {"model_name": "rerank-v3.5"},
        "https://api.cohere.com",
        "/v2/rerank",
        "COHERE_API_KEY",
        lambda q, d: {"model": "rerank-v3.5", "query": q, "documents": d},
        _cohere_answer,
        usage={"search_units": (("meta", "billed_units", "search_units"),)},
    ),
    "voyage": Spec(
        "voyage",
        VoyageReranker,
        {"model_name": "rerank-2.5"},
        "https://api.voyageai.com",
        "/v1/rerank",
        "VOYAGE_API_KEY",
        lambda q, d: {
            "query": q,
            "documents": d,
            "model": "rerank-2.5",
            "top_k": None,
            "truncation": True,
        },
        _voyage_answer,
        usage={"tokens": (("usage", "total_tokens"),)},
    ),
    "jina": Spec(
        "jina",
        JinaReranker,
        {"model_name": "jina-reranker-v2-base-multilingual"},
        "https://api.jina.ai",
        "/v1/rerank",
        "JINA_API_KEY",
        lambda q, d: {
            "model": "jina-reranker-v2-base-multilingual",
            "query": q,
            "documents": d,
            "top_n": len(d),
            "return_documents": False,
        },
        _results_answer,
        usage={"tokens": (("usage", "total_tokens"),)},
    ),
    "vllm": Spec(
        "vllm",
        VLLMReranker,
        {"model_name": "tiny-ce", "base_url": "http://127.0.0.1:8000"},
        "http://127.0.0.1:8000",
        "/v1/rerank",
        None,
        lambda q, d: {"model": "tiny-ce", "query": q, "documents": d},
        _results_answer,
        usage={"tokens": (("usage", "total_tokens"),)},
    ),
    "tei": Spec(
        "tei",
        TEIReranker,
        {"base_url": "http://127.0.0.1:8080"},
        "http://127.0.0.1:8080",
        "/rerank",
        None,
        lambda q, d: {
            "query": q,
            "texts": d,
            "raw_scores": False,
            "return_text": False,
            "truncate": False,
            "truncation_direction": "Right",
        },
        lambda order: [{"index": i, "score": s} for i, s in order],
    ),
    "mixedbread": Spec(
        "mixedbread",
        MixedbreadReranker,
        {"model_name": "mixedbread-ai/mxbai-rerank-large-v2"},
        "https://api.mixedbread.com",
        "/v1/reranking",
        "MXBAI_API_KEY",
        lambda q, d: {
            "model": "mixedbread-ai/mxbai-rerank-large-v2",
            "query": q,
            "input": d,
            "return_input": False,
        },
        _mixedbread_answer,
        usage={"tokens": (("usage", "total_tokens"),)},
    ),
    "nvidia": Spec(
        "nvidia",
        NVIDIAReranker,
        {"model_name": "nvidia/llama-3.2-nv-rerankqa-1b-v2"},
        "https://ai.api.nvidia.com",
        "/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking",
        "NVIDIA_API_KEY",
        lambda q, d: {
            "model": "nvidia/llama-3.2-nv-rerankqa-1b-v2",
            "query": {"text": q},
            "passages": [{"text": x} for x in d],
            "truncate": "END",
        },
        _nvidia_answer,
        usage={"tokens": (("usage", "total_tokens"),)},
    ),
    "pinecone": Spec(
        "pinecone",
        PineconeReranker,
        {"model_name": "bge-reranker-v2-m3"},
        "https://api.pinecone.io",
        "/rerank",
        "PINECONE_API_KEY",
        lambda q, d: {
            "model": "bge-reranker-v2-m3",
            "query": q,
            "documents": [{"text": x} for x in d],
            "return_documents": False,
            "parameters": {"truncate": "END"},
        },
        _pinecone_answer,
        auth_header="api-key",
        auth_value="{key}",
        usage={"rerank_units": (("usage", "rerank_units"),)},
    ),
    "siliconflow": Spec(
        "siliconflow",
        SiliconFlowReranker,
        {"model_name": "BAAI/bge-reranker-v2-m3"},
        "https://api.siliconflow.cn",
        "/v1/rerank",
        "SILICONFLOW_API_KEY",
        lambda q, d: {
            "model": "BAAI/bge-reranker-v2-m3",
            "query": q,
            "documents": d,
            "return_documents": False,
        },
        _siliconflow_answer,
        usage={"tokens": (("tokens", "input_tokens"), ("tokens", "output_tokens"))},
    ),
    "dashscope": Spec(
        "dashscope",
        DashScopeReranker,
        {"model_name": "gte-rerank-v2"},
        "https://dashscope.aliyuncs.com",
        "/api/v1/services/rerank/text-rerank/text-rerank",
        "DASHSCOPE_API_KEY",
        lambda q, d: {
            "model": "gte-rerank-v2",
            "input": {"query": q, "documents": d},
            "parameters": {"return_documents": False},
        },
        _dashscope_answer,
        usage={"tokens": (("usage", "total_tokens"),)},
    ),
}

#: Every variable a provider reads its key from (tests clear them for a clean slate).
KEY_VARS = (
    "COHERE_API_KEY",
    "CO_API_KEY",
    "VOYAGE_API_KEY",
    "JINA_API_KEY",
    "JINAAI_API_KEY",
    "MXBAI_API_KEY",
    "NVIDIA_API_KEY",
    "PINECONE_API_KEY",
    "SILICONFLOW_API_KEY",
    "DASHSCOPE_API_KEY",
)

KEYED = [name for name, spec in SPECS.items() if spec.env is not None]
