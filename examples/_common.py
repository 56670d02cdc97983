"""Shared by the examples: a reranker that works offline, and a tiny deterministic embedding."""

from __future__ import annotations

import math
import re
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from milvus_rerank.base import Reranker  # noqa: E402
from milvus_rerank.cli import build_reranker  # noqa: E402

DIM = 64


def offline_reranker(model: str | None = None) -> Reranker:
    """The default cross-encoder, or a labelled tiny random stand-in without the hub."""
    reranker, _ = build_reranker(
        "cross-encoder", model=model, fallback_to_tiny=True, out=sys.stdout
    )
    return reranker


def embed(text: str) -> list[float]:
    """A normalized bag-of-words vector, deterministic and offline (use a real model)."""
    vec = [0.0] * DIM
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vec[zlib.crc32(word.encode()) % DIM] += 1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
