"""Milvus Lite fixtures and deterministic embeddings for the framework integration tests."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pymilvus")

DIM = 64
CASSETTES = Path(__file__).resolve().parents[3] / "cassettes"


def ordered_vectors(query: str, texts: list[str]) -> dict[str, list[float]]:
    """Vectors that put ``texts`` in exactly this order of similarity to ``query``."""
    table = {query: [1.0] + [0.0] * (DIM - 1)}
    for i, text in enumerate(texts):
        angle = 0.1 * (i + 1)
        table[text] = [math.cos(angle), math.sin(angle)] + [0.0] * (DIM - 2)
    return table


@pytest.fixture
def vcr_config() -> dict[str, Any]:
    """The Cohere cassette replayed through the frameworks (tests marked ``vcr``)."""
    return {
        "filter_headers": ["authorization"],
        "match_on": ["method", "scheme", "host", "port", "path", "json_body"],
    }


@pytest.fixture
def vcr_cassette_dir() -> str:
    return str(CASSETTES / "cohere")


@pytest.fixture(autouse=True)
def _quiet_milvus_lite() -> None:
    # Milvus Lite's embedded gRPC server logs one unimplemented internal call as an ERROR.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
