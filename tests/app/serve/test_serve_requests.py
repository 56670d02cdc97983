"""``serve`` over a reranker answering through ``rerank_response`` (an API, a fallback, a cache).

Each request is scored whole, on its own and beside the others: one member of a fallback ranks
it, its failure is its own, and a slow upstream holds only its own requests.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Sequence

import httpx
import pytest

pytest.importorskip("starlette")

from milvus_rerank import FallbackReranker, Reranker  # noqa: E402
from milvus_rerank.app.serve import create_app  # noqa: E402
from milvus_rerank.app.serve.testing import BackgroundServer  # noqa: E402
from milvus_rerank.core.errors import (  # noqa: E402
    InvalidInputError,
    ProviderError,
    ProviderUnavailableError,
)
from tests.conftest import ScoreTableReranker  # noqa: E402
from tests.fakes import Failing  # noqa: E402


class Flaky(Reranker):
    """A primary that fails every other call (a flapping upstream); scores around +100."""

    provider = "primary"

    def __init__(self) -> None:
        self.calls = itertools.count()

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        if next(self.calls) % 2:
            raise ProviderUnavailableError("primary is down right now", provider="primary")
        return [100.0 + len(d) for d in documents]


class Backup(Reranker):
    """Another model, with another scale: negative scores."""

    provider = "backup"

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        return [-float(len(d)) for d in documents]


async def test_a_large_request_over_a_fallback_is_ranked_by_one_member_only() -> None:
    docs = [("word " * (5 + i)).strip() for i in range(40)]
    # A token budget far below the request's estimate: the old path cut it into micro-batches.
    app = create_app(FallbackReranker([Flaky(), Backup()]), max_batch_tokens=64, max_wait_ms=0)
    members: set[str] = set()
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            for _ in range(4):
                answer = await client.post("/v1/rerank", json={"query": "q", "documents": docs})
                assert answer.status_code == 200
                got = [r["relevance_score"] for r in answer.json()["results"]]
                assert len(got) == len(docs)
                assert all(s > 0 for s in got) or all(s < 0 for s in got), got
                members.add("primary" if got[0] > 0 else "backup")
    assert members == {"primary", "backup"}  # the fallback did answer some requests
    assert app.state.batcher.batches == 4  # one call a request, never cut


class Poisoned(ScoreTableReranker):
    """Scores from a table, after ``delay``; a request holding ``poison`` raises ``error``."""

    def __init__(self, error: Exception, delay: float = 0.1) -> None:
        super().__init__({f"doc {i}": float(i) for i in range(8)})
        self.error = error
        self.delay = delay

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        time.sleep(self.delay)
        if "poison" in documents:
            raise self.error
        return super()._score(query, documents)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (InvalidInputError("this text is refused"), "this text is refused"),
        # An upstream's 400 (e.g. vLLM: a pair past max_model_len) is the client's bad request.
        (
            ProviderError("secret upstream text", provider="vllm", status_code=400),
            "refused this request as invalid (HTTP 400)",
        ),
    ],
)
async def test_one_failing_request_fails_only_itself(error: Exception, message: str) -> None:
    scorer = Poisoned(error)
    app = create_app(scorer, max_wait_ms=50, batch_workers=1)  # one at a time: they queue up
    innocent = {"query": "q", "documents": ["doc 1", "doc 5", "doc 3"]}
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            first = asyncio.ensure_future(client.post("/v1/rerank", json=innocent))
            await asyncio.sleep(0.05)  # the first is being scored: the rest wait together
            poison = asyncio.ensure_future(
                client.post("/v1/rerank", json={"query": "q", "documents": ["doc 2", "poison"]})
            )
            others = await asyncio.gather(
                *(client.post("/v1/rerank", json=innocent) for _ in range(6))
            )
            answers = [await first, *others]
            refused = await poison
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert [r["index"] for r in answer.json()["results"]] == [1, 2, 0]
    assert refused.status_code == 400
    assert message in refused.json()["error"]["message"]
    assert "secret" not in refused.text


class Overlapping(Reranker):
    """Each call takes ``delay`` seconds; records the most calls running at once."""

    provider = "overlap"

    def __init__(self, delay: float, enough: int) -> None:
        self.delay = delay
        self.enough = enough
        self.active = 0
        self.peak = 0
        self.calls = 0
        self._lock = threading.Lock()
        self._met = threading.Event()

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.active >= self.enough:
                self._met.set()
        try:
            self._met.wait(self.delay)  # a serial server never reaches ``enough``: it waits out
            time.sleep(self.delay)
        finally:
            with self._lock:
                self.active -= 1
        return [float(len(d)) for d in documents]


async def test_concurrent_requests_over_a_slow_upstream_are_scored_at_once() -> None:
    count = 6
    scorer = Overlapping(delay=0.3, enough=count)
    app = create_app(scorer, max_wait_ms=0)
    assert app.state.batcher.workers == 8  # the default for an upstream that waits on I/O
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/v1/rerank", json={"query": "q", "documents": ["a", "bb"]})
                    for _ in range(count)
                )
            )
    assert [a.status_code for a in answers] == [200] * count
    assert scorer.calls == count and scorer.peak == count


async def test_batch_workers_bounds_the_requests_scored_at_once() -> None:
    scorer = Overlapping(delay=0.2, enough=2)
    app = create_app(scorer, max_wait_ms=0, batch_workers=2)
    with BackgroundServer(app) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            body = {"query": "q", "documents": ["a"]}
            posts = [client.post("/v1/rerank", json=body) for _ in range(5)]
            answers = await asyncio.gather(*posts)
    assert [a.status_code for a in answers] == [200] * 5
    assert scorer.peak == 2


def limited(wait: float | None) -> Exception:
    from milvus_rerank.core.errors import RateLimitError

    return RateLimitError("slow down", provider="api", retry_after=wait)


@pytest.mark.parametrize(
    ("errors", "status", "retry_after"),
    [
        ([limited(7), limited(3)], 429, "3"),  # every member rate limited: the soonest
        ([limited(None)], 429, "1"),
        ([ProviderUnavailableError("down", provider="a"), limited(2)], 503, None),
        ([ProviderUnavailableError("down", provider="a")], 503, None),
        ([ProviderError("broken", provider="a", status_code=500), limited(2)], 502, None),
    ],
)
def test_a_failed_fallback_is_answered_as_its_members_failures_mean(
    errors: list[Exception], status: int, retry_after: str | None
) -> None:
    members: list[Reranker] = [Failing(error) for error in errors]
    if len(members) > 1:  # nested chains are read through
        members = [FallbackReranker(members[:1]), *members[1:]]
    app = create_app(FallbackReranker(members), max_wait_ms=0)
    with BackgroundServer(app) as running:
        answer = httpx.post(
            running.url + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=30
        )
    assert answer.status_code == status, answer.text
    assert answer.headers.get("retry-after") == retry_after
