"""Every reranker kind for the catalogue: local models, and each API over the fault server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from milvus_rerank import BGEReranker, CrossEncoderReranker, Reranker
from tests.fakes import FaultServer, api_reranker, fault_plan, fault_server
from tests.providers.specs import SPECS

__all__ = ["KINDS", "fault_plan", "fault_server", "make_reranker"]

KINDS = ["cross-encoder", "bge", *sorted(SPECS)]


@pytest.fixture(scope="session")
def make_reranker(
    tiny_models: dict[str, Path], fault_server: FaultServer
) -> Iterator[Callable[..., Reranker]]:
    """``make(kind)``: one shared instance per kind; ``make(kind, fresh=True)``: a new one."""
    cache: dict[str, Reranker] = {
        "cross-encoder": CrossEncoderReranker(str(tiny_models["ce"]), max_length=64),
        "bge": BGEReranker(str(tiny_models["bge"]), max_length=64),
    }

    def make(kind: str, fresh: bool = False) -> Reranker:
        if kind in cache and (not fresh or kind in ("cross-encoder", "bge")):
            return cache[kind]
        reranker = api_reranker(kind, fault_server.url)
        if not fresh:
            cache[kind] = reranker
        return reranker

    yield make
    for reranker in cache.values():
        reranker.close()
