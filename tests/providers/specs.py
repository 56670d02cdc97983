"""Each API provider's documented wire format, written from its API reference (see DESIGN.md).

These are the independent statement of what must go over the wire; tests compare what our
clients send and parse against them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from milvus_rerank import (
    CohereReranker,
    HTTPReranker,
    JinaReranker,
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
}

KEYED = [name for name, spec in SPECS.items() if spec.env is not None]
