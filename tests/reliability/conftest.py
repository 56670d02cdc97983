"""Every reranker kind for the catalogue: local models, and each API over a loopback server."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from milvus_rerank import BGEReranker, CrossEncoderReranker, Reranker
from milvus_rerank.serve import BackgroundServer
from tests.fakes import FaultPlan, make_app
from tests.providers.specs import SPECS

KINDS = ["cross-encoder", "bge", "cohere", "voyage", "jina", "vllm", "tei"]
ROOTS = {"cohere": "/v2", "voyage": "/v1", "jina": "/v1"}


@pytest.fixture(scope="session")
def loopback() -> Iterator[tuple[BackgroundServer, FaultPlan]]:
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    plan = FaultPlan()
    with BackgroundServer(make_app(plan)) as server:
        yield server, plan


@pytest.fixture(scope="session")
def make_reranker(
    tiny_models: dict[str, Path], loopback: tuple[BackgroundServer, FaultPlan]
) -> Iterator[Callable[..., Reranker]]:
    """``make(kind)``: one shared instance per kind; ``make(kind, fresh=True)``: a new one."""
    server, _ = loopback
    cache: dict[str, Reranker] = {
        "cross-encoder": CrossEncoderReranker(str(tiny_models["ce"]), max_length=64),
        "bge": BGEReranker(str(tiny_models["bge"]), max_length=64),
    }

    def make(kind: str, fresh: bool = False) -> Reranker:
        if kind in cache and (not fresh or kind in ("cross-encoder", "bge")):
            return cache[kind]
        spec = SPECS[kind]
        root = server.url + ROOTS.get(kind, "")
        reranker = spec.cls(**{**spec.kwargs, "api_key": "test-key", "base_url": root})
        if not fresh:
            cache[kind] = reranker
        return reranker

    yield make
    for reranker in cache.values():
        reranker.close()
