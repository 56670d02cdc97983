"""``serve`` and the command line over ``backend="onnx"``: the same answers as the reranker's."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("onnxruntime")

from milvus_rerank import CrossEncoderReranker  # noqa: E402
from milvus_rerank.app.cli import main  # noqa: E402
from milvus_rerank.app.serve import create_app  # noqa: E402
from milvus_rerank.app.serve.testing import BackgroundServer  # noqa: E402
from tests.conftest import CORPUS  # noqa: E402

QUERY = "what is the capital of france"


def test_serve_answers_with_the_onnx_scores(onnx_models: dict[str, Path]) -> None:
    reranker = CrossEncoderReranker(str(onnx_models["ce"]), backend="onnx", quantization="int8")
    expected = [(r.index, r.score) for r in reranker.rerank(QUERY, CORPUS)]
    with BackgroundServer(create_app(reranker, max_wait_ms=5)) as running:
        body = httpx.post(
            f"{running.url}/v2/rerank", json={"query": QUERY, "documents": CORPUS}
        ).json()
        vllm = httpx.post(f"{running.url}/v1/rerank", json={"query": QUERY, "documents": CORPUS})
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == expected
    assert (
        vllm.json()["usage"]["total_tokens"] == reranker.rerank_response(QUERY, CORPUS).usage.tokens
    )
    reranker.close()


def test_the_rerank_command_runs_the_onnx_backend(
    onnx_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    documents = tmp_path / "docs.jsonl"
    documents.write_text("\n".join(json.dumps(t) for t in CORPUS) + "\n", "utf-8")
    argv = ["rerank", QUERY, str(documents), "--reranker", "cross-encoder"]
    argv += ["--model", str(onnx_models["ce"]), "--backend", "onnx", "--device", "cpu"]
    assert main([*argv, "--threads", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with CrossEncoderReranker(str(onnx_models["ce"])) as torch_r:
        expected = torch_r.rerank(QUERY, CORPUS)
    assert [row["index"] for row in lines] == [r.index for r in expected]
    assert max(abs(row["score"] - r.score) for row, r in zip(lines, expected, strict=True)) < 1e-4
    assert main([*argv, "--quantization", "int8"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(CORPUS)
