"""Milvus Lite fixtures and deterministic embeddings for the framework integration tests."""

from __future__ import annotations

import logging
import math
import re
import zlib

import pytest

pytest.importorskip("pymilvus")

DIM = 64


def word_vector(text: str) -> list[float]:
    """A normalized bag-of-words vector (crc32 buckets): deterministic, meaningful enough."""
    vec = [0.0] * DIM
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vec[zlib.crc32(word.encode()) % DIM] += 1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def ordered_vectors(query: str, texts: list[str]) -> dict[str, list[float]]:
    """Vectors that put ``texts`` in exactly this order of similarity to ``query``."""
    table = {query: [1.0] + [0.0] * (DIM - 1)}
    for i, text in enumerate(texts):
        angle = 0.1 * (i + 1)
        table[text] = [math.cos(angle), math.sin(angle)] + [0.0] * (DIM - 2)
    return table


@pytest.fixture(autouse=True)
def _quiet_milvus_lite() -> None:
    # Milvus Lite's embedded gRPC server logs one unimplemented internal call as an ERROR.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
