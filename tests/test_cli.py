"""The command line: the demo prints both rankings; rerank turns JSONL into ranked JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from milvus_rerank.cli import main


@pytest.mark.integration
def test_demo_prints_bm25_and_reranked_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--reranker", "cross-encoder", "--top-k", "4"]) == 0
    out = capsys.readouterr().out
    assert "TINY RANDOMLY INITIALIZED" in out  # offline: the stand-in is announced
    assert "First stage: Milvus BM25 full-text search, top 4" in out
    assert "Reranked by CrossEncoderReranker" in out
    ranked = out.split("Reranked by")[1].splitlines()[2:6]
    assert [line.split()[0] for line in ranked] == ["1", "2", "3", "4"]


def test_rerank_jsonl(
    tmp_path: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "\n".join(
            json.dumps({"text": t, "id": i}) for i, t in enumerate(["a cat", "milvus db", "x"])
        )
    )
    args = [
        "rerank",
        "--reranker",
        "cross-encoder",
        "--model",
        str(tiny_models["ce"]),
        "what is milvus",
        str(docs),
        "--top-n",
        "2",
    ]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[0]["score"] >= rows[1]["score"]
    assert {"text", "id", "index", "score"} <= set(rows[0])


def test_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "a"}\n')
    assert (
        main(["rerank", "--reranker", "cross-encoder", "--model", str(tmp_path), "q", str(docs)])
        == 2
    )
    assert capsys.readouterr().err.startswith("milvus-rerank: error: Cannot load a reranker model")
