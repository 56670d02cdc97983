"""Milvus calls an LLM reranker through ``milvus-rerank serve``: the same hits as client-side.

A tiny Qwen3-Reranker checkpoint is served by the ``serve`` command (its server swapped for a
loopback one); Milvus Lite's server-side rerank Function calls it in ``search`` and in
``hybrid_search``, and the ids, order and scores must equal ``rerank_hits`` run here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

from milvus_rerank import CohereReranker, Qwen3Reranker, Reranker  # noqa: E402
from milvus_rerank.app.demo import DEMO_QUERY, load_demo_corpus  # noqa: E402
from milvus_rerank.app.serve import create_app  # noqa: E402
from milvus_rerank.app.serve.testing import BackgroundServer  # noqa: E402
from milvus_rerank.integrations.milvus import rerank_hits, server_side_ranker  # noqa: E402
from milvus_rerank.providers.local.tiny import build_tiny_qwen3_reranker, word_vector  # noqa: E402

NAME = "llm_rerank"
DIM = 64
DENSE_QUERY = "milvus vector database search"

#: Outside the unit tier: Milvus Lite and a real model.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [DEMO_QUERY, *(row["text"] for row in load_demo_corpus())]
    root = tmp_path_factory.mktemp("tiny-qwen3")
    return build_tiny_qwen3_reranker(root / "qwen3", texts=texts, initializer_range=0.2)


@pytest.fixture(scope="module")
def served(qwen3_dir: Path) -> Iterator[tuple[BackgroundServer, Reranker]]:
    """``milvus-rerank serve --reranker qwen3 --model DIR``, served on a loopback port."""
    import milvus_rerank.app.serve
    from milvus_rerank.app.cli import main

    started: list[tuple[BackgroundServer, Reranker]] = []

    def run_server(reranker: Reranker, **options: Any) -> int:
        app = create_app(reranker, model_name=options["model_name"], max_wait_ms=5)
        server = BackgroundServer(app)
        server.__enter__()
        started.append((server, reranker))
        return 0

    patch = pytest.MonkeyPatch()
    patch.setattr(milvus_rerank.app.serve, "run_server", run_server)
    try:
        argv = ["serve", "--reranker", "qwen3", "--model", str(qwen3_dir), "--device", "cpu"]
        assert main(argv) == 0
    finally:
        patch.undo()
    server, reranker = started[0]
    try:
        yield server, reranker
    finally:
        server.__exit__(None, None, None)


def test_serve_answers_every_route_with_qwen3(
    served: tuple[BackgroundServer, Reranker], qwen3_dir: Path
) -> None:
    server, reranker = served
    assert isinstance(reranker, Qwen3Reranker)
    docs = [row["text"] for row in load_demo_corpus()][:6]
    want = [(r.index, r.score) for r in Qwen3Reranker(str(qwen3_dir)).rerank(DEMO_QUERY, docs)]

    def check(pairs: list[tuple[int, float]]) -> None:
        assert [i for i, _ in pairs] == [i for i, _ in want]
        assert [s for _, s in pairs] == pytest.approx([s for _, s in want], abs=1e-5)

    body = {"query": DEMO_QUERY, "documents": docs}
    cohere = httpx.post(f"{server.url}/v2/rerank", json=body).json()["results"]
    check([(r["index"], r["relevance_score"]) for r in cohere])
    for path in ("/v1/rerank", "/rerank"):
        vllm = httpx.post(f"{server.url}{path}", json=body).json()["results"]
        check([(r["index"], r["relevance_score"]) for r in vllm])
    tei = httpx.post(f"{server.url}/rerank", json={"query": DEMO_QUERY, "texts": docs}).json()
    check([(r["index"], r["score"]) for r in tei])
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def _build_hybrid(client: Any, rows: list[dict[str, Any]]) -> None:
    """BM25 over ``text`` plus a dense bag-of-words vector: both first stages of a hybrid."""
    from pymilvus import DataType, Function, FunctionType

    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=8192, enable_analyzer=True)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_function(
        Function(
            name="bm25",
            function_type=FunctionType.BM25,
            input_field_names=["text"],
            output_field_names=["sparse"],
        )
    )
    index = client.prepare_index_params()
    index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    index.add_index(field_name="dense", index_type="FLAT", metric_type="COSINE")
    client.create_collection(NAME, schema=schema, index_params=index)
    client.insert(
        NAME, [{"id": r["id"], "text": r["text"], "dense": word_vector(r["text"])} for r in rows]
    )
    client.load_collection(NAME)


def test_milvus_lite_reranks_search_and_hybrid_search_through_serve(
    served: tuple[BackgroundServer, Reranker], tmp_path: Path
) -> None:
    from pymilvus import AnnSearchRequest, MilvusClient

    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    server, reranker = served
    rows = load_demo_corpus()
    bm25 = {"anns_field": "sparse", "search_params": {"metric_type": "BM25"}}
    ranker = server_side_ranker(
        CohereReranker(base_url=server.url, model_name="qwen3"), [DEMO_QUERY], target="milvus-lite"
    )
    client = MilvusClient(str(tmp_path / "llm.db"))
    try:
        _build_hybrid(client, rows)
        # Milvus reranks every first-stage candidate, then cuts to limit: fetch them all here.
        every = len(rows)
        candidates = client.search(
            NAME, data=[DEMO_QUERY], limit=every, output_fields=["text"], **bm25
        )
        searched = client.search(
            NAME, data=[DEMO_QUERY], limit=5, output_fields=["text"], ranker=ranker, **bm25
        )
        requests = [
            AnnSearchRequest(
                data=[DEMO_QUERY], param={"metric_type": "BM25"}, anns_field="sparse", limit=4
            ),
            AnnSearchRequest(
                # a second view of the query, so the first stages differ: a real union
                data=[word_vector(DENSE_QUERY)],
                param={"metric_type": "COSINE"},
                anns_field="dense",
                limit=4,
            ),
        ]
        union = client.hybrid_search(
            NAME, requests, ranker=_rrf(), limit=every, output_fields=["text"]
        )
        hybrid = client.hybrid_search(
            NAME, requests, ranker=ranker, limit=5, output_fields=["text"]
        )
    finally:
        client.close()

    for server_hits, first_stage in ((searched, candidates), (hybrid, union)):
        local = rerank_hits(reranker, DEMO_QUERY, first_stage, top_n=5)[0]
        assert len(server_hits[0]) == len(local) == 5
        assert [h["id"] for h in server_hits[0]] == [h["id"] for h in local]
        assert [h["distance"] for h in server_hits[0]] == pytest.approx(
            [h["rerank_score"] for h in local], abs=1e-5
        )
    assert len(union[0]) > 4, "the hybrid reranks the union of both first stages"


def _rrf() -> Any:
    from pymilvus import RRFRanker

    return RRFRanker()


def test_eval_falls_back_to_a_tiny_qwen3(capsys: pytest.CaptureFixture[str]) -> None:
    from milvus_rerank.app.cli import main

    data = Path(__file__).resolve().parents[2] / "fixtures" / "beir-mini"
    argv = ["eval", "--reranker", "qwen3", "--model", "milvus-rerank-tests/no-such-model"]
    assert main([*argv, "--device", "cpu", str(data), "--max-queries", "2"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out.lower() and "ndcg" in out.lower()
