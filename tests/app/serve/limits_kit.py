"""What the serve limit tests share: routes' error shapes, a slow scorer, a served tiny model."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette")

from milvus_rerank import CrossEncoderReranker, Reranker  # noqa: E402
from milvus_rerank.app.serve import (  # noqa: E402
    create_app,
)
from milvus_rerank.app.serve.testing import BackgroundServer  # noqa: E402

QUERY = "what is milvus"
JSON = {"Content-Type": "application/json"}
DOCS = ["milvus is a vector database", "paris is the capital of france", "cat"]
#: (path, body key for the documents, how to read the error message of that route's shape)
SHAPES = [
    ("/v2/rerank", "documents", lambda body: body["message"]),
    ("/v1/rerank", "documents", lambda body: body["error"]["message"]),
    ("/rerank", "documents", lambda body: body["error"]["message"]),
    ("/rerank", "texts", lambda body: body["error"]),
]


def assert_shape(path: str, key: str, answer: httpx.Response, status: int) -> str:
    """The answer has ``status`` and the error shape of its route; returns the message."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    if path == "/v2/rerank":
        assert set(body) == {"id", "message"}
        return str(body["message"])
    if key == "texts":
        assert set(body) == {"error", "error_type"} and isinstance(body["error"], str)
        return str(body["error"])
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == status
    return str(body["error"]["message"])


class SlowPairs(Reranker):
    """Scores from the text length, taking ``per_pair`` seconds a pair; records every call."""

    provider = "slow"

    def __init__(
        self, per_pair: float = 0.0, per_call: float = 0.0, gate: threading.Event | None = None
    ) -> None:
        self.per_pair = per_pair
        self.per_call = per_call
        self.gate = gate  # when given, every call waits for it (holds the model busy)
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    @staticmethod
    def value(document: str) -> float:
        return (len(document) % 97) / 97

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        return [self.value(d) for d in documents]

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        with self._lock:
            self.calls.append(list(documents))
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.per_call + self.per_pair * len(documents))
        return [self.value(d) for d in documents]

    def scored(self) -> list[str]:
        with self._lock:
            return [d for call in self.calls for d in call]


@pytest.fixture(autouse=True)
def quiet_uvicorn(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    yield


@pytest.fixture(scope="module")
def local(tiny_models: dict[str, Path]) -> CrossEncoderReranker:
    return CrossEncoderReranker(str(tiny_models["ce"]), device="cpu").load()


@pytest.fixture(scope="module")
def server(local: CrossEncoderReranker) -> Iterator[BackgroundServer]:
    app = create_app(local, max_body_bytes=20_000, max_documents=5, body_timeout=1.0)
    with BackgroundServer(app) as running:
        yield running
