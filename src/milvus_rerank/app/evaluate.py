"""``milvus-rerank eval``: nDCG@10 and MRR@10 before and after reranking, on a BEIR folder.

The folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, with a header).
The first stage is Milvus Lite's BM25 full-text search over title and text.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from milvus_rerank.app.lite import build_bm25_collection, lite_client, search_bm25
from milvus_rerank.core.base import Reranker
from milvus_rerank.core.errors import ConfigurationError, InvalidInputError
from milvus_rerank.integrations.milvus import rerank_hits

__all__ = ["EvalReport", "evaluate", "load_beir", "mrr_at_k", "ndcg_at_k", "read_jsonl", "run_eval"]


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


def read_jsonl(lines: Iterable[str], source: str) -> list[tuple[int, Any]]:
    """The line number and JSON value of each non-blank line; a bad line is an error naming it.

    Raises:
        InvalidInputError: a line is not JSON (the message gives ``source:line``).
    """
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except ValueError as exc:
            raise InvalidInputError(f"{source}:{number}: not a JSON line ({exc})") from None
    return rows


def _read_objects(path: Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of a JSONL file of objects that hold ``fields``; errors name the line."""
    with path.open(encoding="utf-8") as handle:
        numbered = read_jsonl(handle, str(path))
    for number, row in numbered:
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise InvalidInputError(f"{path}:{number}: the row has no {missing[0]!r} field")
    return [row for _, row in numbered]


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
        for row in _read_objects(root / "corpus.jsonl", ["_id"])
    }
    queries = {
        str(row["_id"]): str(row["text"])
        for row in _read_objects(root / "queries.jsonl", ["_id", "text"])
    }
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


def evaluate(
    reranker: Reranker,
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, float]],
    *,
    candidates: int = 50,
    max_queries: int | None = None,
    progress: TextIO | None = None,
) -> EvalReport:
    """Retrieve with Milvus Lite BM25, rerank, and average nDCG@10 and MRR@10 both ways.

    ``progress``, when given, gets a tqdm progress bar over the queries.
    """
    from tqdm import tqdm  # type: ignore[import-untyped]  # a dependency of transformers

    ids = list(corpus)
    evaluated = [q for q in queries if q in qrels][:max_queries]
    sums = [0.0, 0.0, 0.0, 0.0]
    with lite_client("eval") as (client, _):
        started = time.perf_counter()
        rows = [{"id": i, "text": corpus[doc_id][:8000]} for i, doc_id in enumerate(ids)]
        build_bm25_collection(client, rows, "beir")
        bar = tqdm(evaluated, desc="eval", unit="query", file=progress, disable=progress is None)
        with bar:
            for qid in bar:
                hits = search_bm25(client, "beir", queries[qid], candidates)
                before = [ids[h["id"]] for h in hits[0]]
                after = [ids[h["id"]] for h in rerank_hits(reranker, queries[qid], hits)[0]]
                rel = qrels[qid]
                sums[0] += ndcg_at_k(before, rel)
                sums[1] += ndcg_at_k(after, rel)
                sums[2] += mrr_at_k(before, rel)
                sums[3] += mrr_at_k(after, rel)
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


def run_eval(
    reranker: Reranker,
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, float]],
    *,
    tiny: bool = False,
    candidates: int = 50,
    max_queries: int | None = None,
    out: TextIO | None = None,
    progress: TextIO | None = None,
) -> int:
    """``milvus-rerank eval``: evaluate ``reranker`` on a loaded BEIR set, print the table.

    Args:
        reranker: The reranker, already built (the command line builds it from options).
        corpus: Document texts by id, as ``load_beir`` returns them.
        queries: Query texts by id.
        qrels: Relevance of documents by query id.
        tiny: ``reranker`` is a random stand-in: the report says so.
        candidates: BM25 hits to rerank per query.
        max_queries: Evaluate only the first N queries (None: all).
        out: Where the table goes (stdout by default).
        progress: Where the progress bar goes (stderr by default).
    """
    out = out if out is not None else sys.stdout
    report = evaluate(
        reranker,
        corpus,
        queries,
        qrels,
        candidates=candidates,
        max_queries=max_queries,
        progress=progress if progress is not None else sys.stderr,
    )
    print(f"{len(corpus)} documents; reranker {reranker!r}", file=out)
    if tiny:
        print("(a TINY RANDOM stand-in model: its numbers say nothing about reranking)", file=out)
    print(report.table(), file=out)
    return 0
