"""``GET /metrics``: exact counts read back through Prometheus' own parser, labels bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from milvus_rerank import Reranker  # noqa: E402
from milvus_rerank.app.serve import create_app  # noqa: E402
from milvus_rerank.app.serve.metrics import REASONS, reason_for, route_label  # noqa: E402
from milvus_rerank.core.results import Usage  # noqa: E402

KEY = "metrics-test-key-0123"
JSON = {"Content-Type": "application/json"}


class Counted(Reranker):
    """Scores from the text length, reporting 10 tokens a document; ``gate`` holds each call."""

    provider = "counted"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.entered = threading.Event()

    def _score_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        return [float(len(d)) for d in documents], Usage(tokens=10 * len(documents))

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        return self._score_usage(query, documents)[0]


class Pairs(Reranker):
    """A reranker batched through its own ``score_pairs``."""

    provider = "pairs"

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        return [float(len(d)) for d in documents]

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        return [float(len(d)) for d in documents]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient) -> dict[Any, float]:
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return samples(answer.text)


def client_of(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost", **kwargs)


def test_every_answer_is_counted_exactly_by_route_status_and_reason() -> None:
    app = create_app(Counted(), max_documents=3, max_body_bytes=2_000)
    docs = ["a", "bb", "ccc"]

    async def run() -> dict[Any, float]:
        async with client_of(app, headers=JSON) as client:
            for _ in range(5):
                ok = await client.post("/v2/rerank", json={"query": "q", "documents": docs})
                assert ok.status_code == 200
            for _ in range(2):
                ok = await client.post("/v1/rerank", json={"query": "q", "documents": docs[:2]})
                assert ok.status_code == 200
            tei = await client.post("/rerank", json={"query": "q", "texts": docs[:1]})
            assert tei.status_code == 200
            assert (await client.post("/v2/rerank", content=b"{nope")).status_code == 400
            bad_tei = await client.post("/rerank", json={"query": "", "texts": docs})
            assert bad_tei.status_code == 422  # TEI's invalid input: reason invalid
            many = await client.post("/v1/rerank", json={"query": "q", "documents": docs * 2})
            assert many.status_code == 422
            big = await client.post("/v2/rerank", json={"query": "q", "documents": ["x" * 3000]})
            assert big.status_code == 413
            for path in ("/admin/one", "/admin/two", "/v3/rerank"):  # unknown: one label
                assert (await client.get(path)).status_code == 404
            assert (await client.get("/health")).status_code == 200
            return await scrape(client)

    found = asyncio.run(run())
    total = "milvus_rerank_requests_total"
    assert value(found, total, route="/v2/rerank", status="200") == 5
    assert value(found, total, route="/v1/rerank", status="200") == 2
    assert value(found, total, route="/rerank", status="200") == 1
    assert value(found, total, route="/v2/rerank", status="400") == 1
    assert value(found, total, route="/rerank", status="422") == 1
    assert value(found, total, route="/v1/rerank", status="422") == 1
    assert value(found, total, route="/v2/rerank", status="413") == 1
    assert value(found, total, route="other", status="404") == 3
    assert value(found, total, route="/health", status="200") == 1
    assert value(found, total, route="/metrics", status="200") == 0  # counted once answered
    count = "milvus_rerank_request_duration_seconds_count"
    assert value(found, count, route="/v2/rerank") == 7
    assert value(found, count, route="other") == 3
    assert value(found, "milvus_rerank_pairs_total") == 5 * 3 + 2 * 2 + 1
    assert value(found, "milvus_rerank_tokens_total") == 10 * (5 * 3 + 2 * 2 + 1)
    rejected = "milvus_rerank_rejected_total"
    assert {r: value(found, rejected, reason=r) for r in REASONS} == {
        **dict.fromkeys(REASONS, 0.0),
        "invalid": 2,
        "too_many_documents": 1,
        "too_large": 1,
    }
    # a whole request to a reranker that is not batched is one "batch" of its pairs
    assert value(found, "milvus_rerank_batch_pairs_count") == 8
    assert value(found, "milvus_rerank_batch_pairs_sum") == 5 * 3 + 2 * 2 + 1
    routes = {dict(labels).get("route") for (_, labels) in found if dict(labels).get("route")}
    assert routes <= {"/v2/rerank", "/v1/rerank", "/rerank", "/health", "/metrics", "other"}


def test_metrics_need_no_key_and_hold_no_key_query_document_or_path() -> None:
    app = create_app(Counted(), api_key=KEY)
    secret_query, secret_doc = "zebra-query-7f3a", "walrus-document-9c1e"

    async def run() -> str:
        async with client_of(app, headers=JSON) as client:
            auth = {"Authorization": f"Bearer {KEY}"}
            body = {"query": secret_query, "documents": [secret_doc, "x"]}
            assert (await client.post("/v2/rerank", json=body, headers=auth)).status_code == 200
            wrong = {"Authorization": "Bearer not-the-key-1234"}
            assert (await client.post("/v2/rerank", json=body, headers=wrong)).status_code == 401
            assert (await client.get("/secret-path-4d2b?key=" + KEY)).status_code == 404
            answer = await client.get("/metrics")  # no key
            assert answer.status_code == 200
            return answer.text

    text = asyncio.run(run())
    for secret in (KEY, "not-the-key", secret_query, secret_doc, "secret-path", "4d2b"):
        assert secret not in text
    found = samples(text)
    assert value(found, "milvus_rerank_rejected_total", reason="unauthorized") == 1
    assert value(found, "milvus_rerank_requests_total", route="other", status="404") == 1


def test_the_gauges_show_requests_in_flight_and_refusals_of_an_overloaded_server() -> None:
    gate = threading.Event()
    reranker = Counted(gate)
    app = create_app(reranker, max_concurrent_requests=1)

    async def run() -> tuple[dict[Any, float], dict[Any, float], int]:
        async with client_of(app, headers=JSON) as client:
            held = asyncio.ensure_future(
                client.post("/v2/rerank", json={"query": "q", "documents": ["a", "b", "c"]})
            )
            while not reranker.entered.is_set():
                await asyncio.sleep(0.01)
            during = await scrape(client)
            busy = await client.post("/v2/rerank", json={"query": "q", "documents": ["a"]})
            gate.set()
            assert (await held).status_code == 200
            return during, await scrape(client), busy.status_code

    during, after, busy = asyncio.run(run())
    assert busy == 429
    assert value(during, "milvus_rerank_inflight_requests") == 1
    assert value(during, "milvus_rerank_queue_pairs") == 3  # a whole request waits until answered
    assert value(after, "milvus_rerank_inflight_requests") == 0
    assert value(after, "milvus_rerank_queue_pairs") == 0
    assert value(after, "milvus_rerank_rejected_total", reason="overloaded") == 1


def test_batch_sizes_are_the_micro_batches_handed_to_the_model() -> None:
    app = create_app(Pairs(), max_wait_ms=0)

    async def run() -> dict[Any, float]:
        async with client_of(app, headers=JSON) as client:
            for size in (1, 3, 5):
                body = {"query": "q", "documents": [str(i) for i in range(size)]}
                assert (await client.post("/v1/rerank", json=body)).status_code == 200
            return await scrape(client)

    found = asyncio.run(run())
    assert value(found, "milvus_rerank_batch_pairs_count") == 3
    assert value(found, "milvus_rerank_batch_pairs_sum") == 9
    assert value(found, "milvus_rerank_batch_pairs_bucket", le="1.0") == 1
    assert value(found, "milvus_rerank_batch_pairs_bucket", le="4.0") == 2
    assert value(found, "milvus_rerank_pairs_total") == 9
    assert value(found, "milvus_rerank_tokens_total") == 0  # score_pairs counts none


def test_two_apps_in_one_process_count_apart() -> None:
    first, second = create_app(Counted()), create_app(Counted())

    async def run() -> tuple[dict[Any, float], dict[Any, float]]:
        async with client_of(first, headers=JSON) as one, client_of(second) as two:
            assert (
                await one.post("/v2/rerank", json={"query": "q", "documents": ["a"]})
            ).is_success
            return await scrape(one), await scrape(two)

    one, two = asyncio.run(run())
    total = "milvus_rerank_requests_total"
    assert value(one, total, route="/v2/rerank", status="200") == 1
    assert value(two, total, route="/v2/rerank", status="200") == 0


def test_metrics_keep_the_host_check_of_a_keyless_server() -> None:
    app = create_app(Counted())

    async def run() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as c:
            return (await c.get("/metrics")).status_code

    assert asyncio.run(run()) == 421


def test_route_labels_and_reasons_come_from_fixed_sets() -> None:
    assert route_label({"path": "/v2/rerank"}) == "/v2/rerank"
    assert route_label({"path": "/ray/v2/rerank", "root_path": "/ray"}) == "/v2/rerank"
    assert route_label({"path": "/other"}) == "other"
    assert route_label({"path": "other"}) == "other"
    assert route_label({"path": "/v2/rerank/"}) == "other"
    assert reason_for(429) == "rate_limited" and reason_for(429, "overloaded") == "overloaded"
    assert reason_for(503) == "unavailable" and reason_for(503, "draining") == "draining"
    assert reason_for(500) is None and reason_for(502) is None
    assert reason_for(400, "made-up") is None


def test_a_trailing_slash_is_a_404_never_a_redirect_to_the_clients_host() -> None:
    """Starlette's slash redirect echoed the request's Host header in its Location."""
    app = create_app(Counted(), api_key="kk-12345678")

    async def run() -> list[httpx.Response]:
        headers = {**JSON, "Host": "evil.example.com", "Authorization": "Bearer kk-12345678"}
        async with client_of(app, headers=headers) as client:
            return [
                await client.post("/v2/rerank/", json={"query": "q", "documents": ["a"]}),
                await client.get("/metrics/"),
            ]

    for answer in asyncio.run(run()):
        assert answer.status_code == 404 and "location" not in answer.headers


def test_the_queue_gauge_counts_pairs_while_they_are_tokenized() -> None:
    """The autoscaling signal rises as requests arrive, not once tokenization ends (it read 0
    for the first 0.8 s of 10,800 pairs arriving at once)."""
    import threading

    from milvus_rerank.app.serve.batcher import RequestBatcher

    release = threading.Event()

    class Tokenizing:
        """A runner whose tokenization holds until released (``runner_batcher`` reads the rest)."""

        options: dict[str, Any] = {}
        batch_size = 8

        def load(self) -> Any:
            return type("Loaded", (), {"device": "cpu", "max_length": 512})()

        def token_budget(self, device: str) -> None:
            return None

        def prepare(self, queries: Any, documents: Any, family: Any) -> Any:
            release.wait(10)
            raise RuntimeError("stop here")

        def forward(self, rows: Any) -> Any:
            raise AssertionError("never reached")

    def unused(queries: Any, documents: Any) -> list[float]:
        raise AssertionError("never reached")

    async def run() -> tuple[int, int]:
        batcher = RequestBatcher(unused, runner=Tokenizing(), workers=1)  # type: ignore[arg-type]
        scoring = asyncio.ensure_future(batcher.score("q", ["a", "b", "c", "a"]))
        await asyncio.sleep(0.1)
        during = batcher.pending_pairs
        release.set()
        with pytest.raises(RuntimeError, match="stop here"):
            await scoring
        return during, batcher.pending_pairs

    assert asyncio.run(run()) == (3, 0)  # the distinct pairs, then none
