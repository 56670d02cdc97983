"""API rerankers over ``httpx.MockTransport``: the answers a provider gives, the reranker asking."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from milvus_rerank.providers.api.contract import HTTPReranker
from tests.fakes import FAST_RETRY
from tests.providers.api.specs import (
    Spec,
    request_documents,
)

QUERY = "what is milvus"
DOCS = ["paris is in france", "milvus is a vector database", "what is a database", "milvus"]
KEY = "sk-live-" + "A1b2C3d4" * 4


def scores_for(docs: list[str]) -> list[float]:
    return [len(set(QUERY.split()) & set(d.split())) + 1 / (2 + len(d)) for d in docs]


def answer_order(docs: list[str]) -> list[tuple[int, float]]:
    scores = scores_for(docs)
    return sorted(enumerate(scores), key=lambda p: -p[1])


Handler = Callable[[httpx.Request], httpx.Response]


def ok_handler(spec: Spec, seen: list[httpx.Request] | None = None) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        docs = request_documents(json.loads(request.content))
        return httpx.Response(200, json=spec.answer(answer_order(docs)))

    return handle


def make(spec: Spec, handler: Handler, **kwargs: Any) -> HTTPReranker:
    transport = httpx.MockTransport(handler)
    options = {**spec.kwargs, "api_key": KEY, "retry": FAST_RETRY, **kwargs}
    return spec.cls(
        http_client=httpx.Client(transport=transport),
        http_async_client=httpx.AsyncClient(transport=transport),
        **options,
    )
