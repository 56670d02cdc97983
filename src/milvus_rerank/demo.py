"""``milvus-rerank demo``: BM25 full-text search on Milvus Lite, then a reranker, side by side."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from .errors import MissingDependencyError
from .milvus import rerank_hits

__all__ = ["DEMO_QUERY", "build_demo_collection", "load_demo_corpus", "run_demo", "search_bm25"]

#: The query of pymilvus's rerankers example.
DEMO_QUERY = (
    "What event in 1956 marked the official birth of artificial intelligence as a discipline?"
)
COLLECTION = "ai_history"


def load_demo_corpus() -> list[dict[str, Any]]:
    """The small AI-history corpus shipped with the package (it holds pymilvus's example four)."""
    text = resources.files("milvus_rerank").joinpath("data/ai_history.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def build_demo_collection(client: Any, rows: list[dict[str, Any]], name: str = COLLECTION) -> None:
    """Create a collection with Milvus's built-in BM25 full-text search over ``text``."""
    from pymilvus import DataType, Function, FunctionType

    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=8192, enable_analyzer=True)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
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
    client.create_collection(name, schema=schema, index_params=index)
    client.insert(name, rows)
    client.load_collection(name)


def search_bm25(client: Any, name: str, query: str, limit: int) -> list[list[dict[str, Any]]]:
    """BM25 full-text search of a ``build_demo_collection`` collection, with the text field."""
    hits: list[list[dict[str, Any]]] = client.search(
        name,
        data=[query],
        anns_field="sparse",
        limit=limit,
        output_fields=["text"],
        search_params={"metric_type": "BM25"},
    )
    return hits


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(
    title: str, hits: list[dict[str, Any]], score_key: str, out: TextIO, width: int = 84
) -> None:
    """Print ranked hits as a small table."""
    print(f"\n{title}", file=out)
    print(f"{'#':>2}  {'id':>3}  {score_key:>12}  text", file=out)
    for rank, hit in enumerate(hits, 1):
        text = _clip(hit["entity"]["text"], width)
        print(f"{rank:>2}  {hit['id']:>3}  {hit[score_key]:>12.4f}  {text}", file=out)


def run_demo(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Retrieve with BM25 on Milvus Lite, rerank, print both rankings (to stdout by default)."""
    out = out if out is not None else sys.stdout
    from .cli import reranker_from_args

    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise MissingDependencyError("The demo", "milvus", "pymilvus") from exc

    reranker, tiny = reranker_from_args(args, fallback_to_tiny=True, out=out)
    rows = load_demo_corpus()
    folder = None
    if args.db:
        db = Path(args.db)
    else:
        folder = Path(tempfile.mkdtemp(prefix="milvus-rerank-demo-"))
        db = folder / "demo.db"
    # Milvus Lite's embedded gRPC server logs an unimplemented internal call as an ERROR.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    client = MilvusClient(str(db))
    try:
        build_demo_collection(client, rows)
        print(f"Milvus Lite at {db}: {len(rows)} documents, BM25 full-text index.", file=out)
        print(f"Query: {DEMO_QUERY}", file=out)
        hits = search_bm25(client, COLLECTION, DEMO_QUERY, args.top_k)
        first = [dict(h) for h in hits[0]]
        print_table(
            f"First stage: Milvus BM25 full-text search, top {len(first)}", first, "distance", out
        )
        if first and all(h["distance"] <= 0 for h in first):
            print("(Milvus Lite reports the BM25 score negated: the lowest ranks first.)", file=out)
        started = time.perf_counter()
        with reranker:
            reranked = rerank_hits(reranker, DEMO_QUERY, hits)[0]
        elapsed = (time.perf_counter() - started) * 1000
        label = f"{reranker!r}" + ("  [TINY RANDOM MODEL: scores are meaningless]" if tiny else "")
        print_table(f"Reranked by {label} in {elapsed:.0f} ms", reranked, "rerank_score", out)
    finally:
        client.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
