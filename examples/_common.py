"""Shared by the examples: a reranker that works offline, and a tiny deterministic embedding."""

from __future__ import annotations

import atexit
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from milvus_rerank.base import Reranker  # noqa: E402
from milvus_rerank.cli import open_reranker  # noqa: E402
from milvus_rerank.tiny import word_vector  # noqa: E402

DIM = 64


def offline_reranker(model: str | None = None) -> Reranker:
    """The default cross-encoder, or a labelled tiny random stand-in without the hub."""
    stack = ExitStack()
    atexit.register(stack.close)  # the stand-in's folder goes when the example ends
    reranker, _ = stack.enter_context(
        open_reranker("cross-encoder", model_name=model, fallback_to_tiny=True, out=sys.stdout)
    )
    return reranker


def embed(text: str) -> list[float]:
    """A deterministic offline embedding (``milvus_rerank.tiny.word_vector``): use a real model."""
    return word_vector(text, DIM)
