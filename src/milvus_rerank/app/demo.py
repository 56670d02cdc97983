"""``milvus-rerank demo``: BM25 full-text search on Milvus Lite, then a reranker, side by side."""

from __future__ import annotations

import json
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from milvus_rerank.app.lite import build_bm25_collection, lite_client, search_bm25
from milvus_rerank.core.base import Reranker
from milvus_rerank.integrations.milvus import rerank_hits

__all__ = ["DEMO_QUERY", "build_demo_collection", "load_demo_corpus", "run_demo"]

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
    """The demo's BM25 collection: ``lite.build_bm25_collection`` under the demo's name."""
    build_bm25_collection(client, rows, name)


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


def run_demo(
    reranker: Reranker,
    *,
    tiny: bool = False,
    top_k: int = 5,
    db: str | Path | None = None,
    out: TextIO | None = None,
) -> int:
    """Retrieve with BM25 on Milvus Lite, rerank with ``reranker``, print both rankings.

    Args:
        reranker: The reranker, already built (``milvus-rerank demo`` builds it from options).
        tiny: ``reranker`` is a random stand-in: its table says so.
        top_k: Hits to retrieve and rerank.
        db: Milvus Lite file to use (None: a temporary one, removed afterwards).
        out: Where to print (stdout by default).
    """
    out = out if out is not None else sys.stdout
    rows = load_demo_corpus()
    with lite_client("The demo", db) as (client, path):
        build_demo_collection(client, rows)
        print(f"Milvus Lite at {path}: {len(rows)} documents, BM25 full-text index.", file=out)
        print(f"Query: {DEMO_QUERY}", file=out)
        hits = search_bm25(client, COLLECTION, DEMO_QUERY, top_k)
        first = [dict(h) for h in hits[0]]
        print_table(
            f"First stage: Milvus BM25 full-text search, top {len(first)}", first, "distance", out
        )
        if first and all(h["distance"] <= 0 for h in first):
            print("(Milvus Lite reports the BM25 score negated: the lowest ranks first.)", file=out)
        started = time.perf_counter()
        reranked = rerank_hits(reranker, DEMO_QUERY, hits)[0]
        elapsed = (time.perf_counter() - started) * 1000
    label = f"{reranker!r}" + ("  [TINY RANDOM MODEL: scores are meaningless]" if tiny else "")
    print_table(f"Reranked by {label} in {elapsed:.0f} ms", reranked, "rerank_score", out)
    return 0
