"""``eval``: the metrics by their definitions, and a run on a small BEIR-format fixture."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import pytest

from milvus_rerank import ConfigurationError, InvalidInputError
from milvus_rerank.app.cli import main
from milvus_rerank.app.evaluate import evaluate, load_beir, mrr_at_k, ndcg_at_k
from milvus_rerank.core.base import Reranker
from tests.app.test_cli import NO_SUCH_MODEL, left_behind

BEIR = Path(__file__).resolve().parents[1] / "fixtures" / "beir-mini"


def test_ndcg_by_definition() -> None:
    rel = {"a": 2.0, "b": 1.0}
    assert ndcg_at_k(["a", "b", "c"], rel) == pytest.approx(1.0)
    dcg = (2**1 - 1) / math.log2(2) + (2**2 - 1) / math.log2(3)
    idcg = (2**2 - 1) / math.log2(2) + (2**1 - 1) / math.log2(3)
    assert ndcg_at_k(["b", "a"], rel) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["x"] * 10 + ["a"], rel) == 0.0  # past k counts nothing
    assert ndcg_at_k(["a"], {}) == 0.0


def test_mrr_by_definition() -> None:
    assert mrr_at_k(["x", "y", "a"], {"a": 1.0}) == pytest.approx(1 / 3)
    assert mrr_at_k(["a"], {"a": 0.0}) == 0.0
    assert mrr_at_k(["x"] * 10 + ["a"], {"a": 1.0}) == 0.0


def test_load_beir_and_bad_folder(tmp_path: Path) -> None:
    corpus, queries, qrels = load_beir(BEIR)
    assert len(corpus) == 10 and len(queries) == 4 and qrels["q1"] == {"d1": 2.0, "d2": 1.0}
    assert corpus["d3"].startswith("Milvus Milvus is")
    with pytest.raises(ConfigurationError, match="corpus.jsonl is missing"):
        load_beir(tmp_path)


def test_bad_beir_rows_name_their_line(tmp_path: Path) -> None:
    data = tmp_path / "beir"
    shutil.copytree(BEIR, data)
    queries = (data / "queries.jsonl").read_text().splitlines()
    (data / "queries.jsonl").write_text("\n".join([queries[0], "{oops", *queries[1:]]))
    with pytest.raises(InvalidInputError, match=r"queries.jsonl:2: not a JSON line"):
        load_beir(data)
    (data / "queries.jsonl").write_text("\n".join([queries[0], '{"_id": "q9"}']))
    with pytest.raises(InvalidInputError, match=r"queries.jsonl:2: the row has no 'text' field"):
        load_beir(data)


class OracleReranker(Reranker):
    """Knows the qrels: scores each document by its true relevance to the query."""

    def __init__(
        self, corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, dict[str, float]]
    ) -> None:
        self.truth = {
            queries[q]: {corpus[d]: rel for d, rel in rels.items()} for q, rels in qrels.items()
        }

    def _score(self, query: str, documents: list[str]) -> list[float]:
        return [self.truth[query].get(doc, 0.0) for doc in documents]


class AntiOracleReranker(OracleReranker):
    def _score(self, query: str, documents: list[str]) -> list[float]:
        return [-s for s in super()._score(query, documents)]


@pytest.mark.integration
def test_metrics_move_the_right_way() -> None:
    corpus, queries, qrels = load_beir(BEIR)
    best = evaluate(OracleReranker(corpus, queries, qrels), corpus, queries, qrels, candidates=10)
    worst = evaluate(
        AntiOracleReranker(corpus, queries, qrels), corpus, queries, qrels, candidates=10
    )
    assert best.queries == worst.queries == 4
    assert best.ndcg_before == worst.ndcg_before  # the same BM25 first stage
    assert best.ndcg_after == pytest.approx(1.0) and best.mrr_after == pytest.approx(1.0)
    assert worst.ndcg_after < best.ndcg_after and worst.mrr_after < best.mrr_after


@pytest.mark.integration
def test_eval_command_prints_the_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    argv = ["eval", str(BEIR), "--reranker", "cross-encoder", "--model", NO_SUCH_MODEL]
    assert main([*argv, "--candidates", "5"]) == 0
    captured = capsys.readouterr()
    assert "TINY RANDOMLY INITIALIZED" in captured.out  # the stand-in, whatever is cached here
    assert "nDCG@10" in captured.out and "MRR@10" in captured.out and "4 queries" in captured.out
    assert "4/4" in captured.err  # tqdm's progress bar
    assert left_behind(tmpdir) == []  # the stand-in and the Milvus Lite file are gone


def test_eval_bad_folder_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("milvus-rerank: error: ") and "corpus.jsonl is missing" in err
    assert err.count("\n") == 1
