"""``milvus-rerank eval``: nDCG@10 and MRR@10 before and after reranking, on a BEIR folder.

The folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, with a header).
The first stage is Milvus Lite's BM25 full-text search over title and text.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .errors import ConfigurationError, MissingDependencyError

__all__ = ["EvalReport", "load_beir", "mrr_at_k", "ndcg_at_k", "run_eval"]


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int = 10) -> float:
    """Normalized discounted cumulative gain of ``ranked`` ids at ``k`` (graded relevance)."""
    gains = [relevance.get(doc, 0.0) for doc in ranked[:k]]
    dcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted(relevance.values(), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int = 10) -> float:
    """Reciprocal rank of the first relevant id within ``k`` (0 when none)."""
    for i, doc in enumerate(ranked[:k]):
        if relevance.get(doc, 0.0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_beir(
    folder: str | Path, split: str = "test"
) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, float]]]:
    """Corpus texts, query texts and qrels of a BEIR-format folder."""
    root = Path(folder)
    for needed in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (root / needed).is_file():
            raise ConfigurationError(f"{root} is not a BEIR folder: {needed} is missing")
    corpus = {
        str(row["_id"]): " ".join(p for p in (row.get("title", ""), row.get("text", "")) if p)
        for row in _read_jsonl(root / "corpus.jsonl")
    }
    queries = {str(row["_id"]): str(row["text"]) for row in _read_jsonl(root / "queries.jsonl")}
    qrels: dict[str, dict[str, float]] = {}
    with (root / f"qrels/{split}.tsv").open(encoding="utf-8") as handle:
        rows = csv.reader(handle, delimiter="\t")
        next(rows, None)  # header
        for row in rows:
            if len(row) >= 3:
                qrels.setdefault(row[0], {})[row[1]] = float(row[2])
    return corpus, queries, qrels


@dataclass(frozen=True)
class EvalReport:
    """Mean metrics over the evaluated queries."""

    queries: int
    ndcg_before: float
    ndcg_after: float
    mrr_before: float
    mrr_after: float
    seconds: float

    def table(self) -> str:
        """The report as a small text table."""
        return "\n".join(
            [
                f"{'metric':<10} {'BM25':>8} {'reranked':>9} {'change':>8}",
                f"{'nDCG@10':<10} {self.ndcg_before:>8.4f} {self.ndcg_after:>9.4f} "
                f"{self.ndcg_after - self.ndcg_before:>+8.4f}",
                f"{'MRR@10':<10} {self.mrr_before:>8.4f} {self.mrr_after:>9.4f} "
                f"{self.mrr_after - self.mrr_before:>+8.4f}",
                f"{self.queries} queries in {self.seconds:.1f}s",
            ]
        )


def _progress(done: int, total: int, out: TextIO) -> None:
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} queries", end=end, file=out)


def evaluate(
    reranker: Any,
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, float]],
    *,
    candidates: int = 50,
    max_queries: int | None = None,
    progress: TextIO | None = None,
) -> EvalReport:
    """Retrieve with Milvus Lite BM25, rerank, and average nDCG@10 and MRR@10 both ways."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise MissingDependencyError("eval", "milvus", "pymilvus") from exc
    from .demo import build_demo_collection, search_bm25
    from .milvus import rerank_hits

    ids = list(corpus)
    evaluated = [q for q in queries if q in qrels][:max_queries]
    folder = Path(tempfile.mkdtemp(prefix="milvus-rerank-eval-"))
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    client = MilvusClient(str(folder / "eval.db"))
    started = time.perf_counter()
    sums = [0.0, 0.0, 0.0, 0.0]
    try:
        rows = [{"id": i, "text": corpus[doc_id][:8000]} for i, doc_id in enumerate(ids)]
        build_demo_collection(client, rows, name="beir")
        for n, qid in enumerate(evaluated, 1):
            hits = search_bm25(client, "beir", queries[qid], candidates)
            before = [ids[h["id"]] for h in hits[0]]
            after = [ids[h["id"]] for h in rerank_hits(reranker, queries[qid], hits)[0]]
            rel = qrels[qid]
            sums[0] += ndcg_at_k(before, rel)
            sums[1] += ndcg_at_k(after, rel)
            sums[2] += mrr_at_k(before, rel)
            sums[3] += mrr_at_k(after, rel)
            if progress is not None:
                _progress(n, len(evaluated), progress)
    finally:
        client.close()
        shutil.rmtree(folder, ignore_errors=True)
    count = max(len(evaluated), 1)
    ndcg_before, ndcg_after, mrr_before, mrr_after = (s / count for s in sums)
    return EvalReport(
        queries=len(evaluated),
        ndcg_before=ndcg_before,
        ndcg_after=ndcg_after,
        mrr_before=mrr_before,
        mrr_after=mrr_after,
        seconds=time.perf_counter() - started,
    )


def run_eval(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``milvus-rerank eval``: print the before/after table."""
    from .cli import reranker_from_args

    out = out if out is not None else sys.stdout
    corpus, queries, qrels = load_beir(args.data, args.split)
    reranker, tiny = reranker_from_args(args, fallback_to_tiny=True, out=out)
    with reranker:
        report = evaluate(
            reranker,
            corpus,
            queries,
            qrels,
            candidates=args.candidates,
            max_queries=args.max_queries,
            progress=sys.stderr,
        )
    print(f"{len(corpus)} documents; reranker {reranker!r}", file=out)
    if tiny:
        print("(a TINY RANDOM stand-in model: its numbers say nothing about reranking)", file=out)
    print(report.table(), file=out)
    return 0
