"""What one ``serve`` app holds (``ServeState``), and the names and sizes taken from its reranker.

The handlers are plain functions over this state: the reranker, its limits and batcher, the
served name, the key and hosts answered, the instruction views kept, the requests in flight,
the metrics and the drain.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from milvus_rerank.app.serve.batcher import RequestBatcher
from milvus_rerank.app.serve.drain import Drain
from milvus_rerank.app.serve.limits import ServeLimits
from milvus_rerank.app.serve.metrics import ServeMetrics
from milvus_rerank.core.base import Reranker
from milvus_rerank.core.errors import RerankError
from milvus_rerank.providers.local.reranker import LocalReranker

__all__ = ["ServeState", "document_passages", "model_window", "served_model_name"]


@dataclass(eq=False)
class ServeState:
    """One app's state, shared by its handlers (and by every event loop running the app).

    Attributes:
        reranker: The reranker served.
        limits: The app's limits.
        batcher: Scores the requests (shared micro-batches, or whole requests).
        served_name: The model name answers and ``/health`` carry.
        window: The reranker's token window, None where unknown.
        max_chars: Characters of the query and of each document kept before scoring.
        api_key: The bearer key every rerank route needs (bytes), None for none.
        hosts: ``Host`` names answered besides localhost and IP addresses; None: any.
        local: The reranker where its runner is fed rows directly (``batching == "rows"``).
        metrics: The app's Prometheus metrics (``GET /metrics``).
        drain: The drain: rank requests in flight, and whether the server is stopping.
        upstreams: The providers that are upstream APIs (``upstream_providers``).
        views: The instruction views kept, the most recent last.
        active: Requests with their body in, being answered now.
    """

    reranker: Reranker
    limits: ServeLimits
    batcher: RequestBatcher
    served_name: str
    window: int | None
    max_chars: int
    api_key: bytes | None
    hosts: frozenset[str] | None
    local: LocalReranker | None
    metrics: ServeMetrics
    drain: Drain = field(default_factory=Drain)
    upstreams: frozenset[str] = frozenset()
    views: OrderedDict[str, Reranker] = field(default_factory=OrderedDict)
    active: int = 0


def model_window(reranker: Reranker) -> int | None:
    """The reranker's token window (``Reranker.input_window``), or None where it cannot say."""
    try:
        value = reranker.input_window()
    except RerankError:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def document_passages(reranker: Reranker) -> int:
    """Windows of a document the reranker reads (``Reranker.passages_per_document``); else 1."""
    try:
        value = reranker.passages_per_document()
    except RerankError:
        return 1
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def served_model_name(reranker: Reranker, model_name: str | None = None) -> str:
    """The name ``serve`` answers with: ``model_name``, else the reranker's, never a path.

    A local checkpoint's ``model_name`` is its folder: served as the folder's own name, since
    ``/health`` needs no key and the full path would tell any client the file layout.
    """
    if model_name:
        return model_name
    name = getattr(reranker, "model_name", None)
    if not isinstance(name, str) or not name.strip():
        return type(reranker).__name__
    looks_local = name.startswith(("/", ".", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", name)
    if looks_local or "\\" in name or Path(name).expanduser().exists():
        last = re.split(r"[\\/]", name.rstrip("\\/"))[-1]
        return last if last not in ("", ".", "..", "~") else type(reranker).__name__
    return name
