"""Each example runs as the README says (``python examples/<name>.py``) and prints a ranking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("script", "lines"),
    [("milvus_client_rerank.py", 3), ("langchain_rag.py", 3), ("llama_index_query_engine.py", 3)],
)
def test_example_runs(script: str, lines: int) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TINY RANDOMLY INITIALIZED" in result.stdout  # the offline stand-in is announced
    scored = [
        line
        for line in result.stdout.splitlines()
        if line.strip()[:1].isdigit() or "rerank_score=" in line
    ]
    assert len(scored) >= lines, result.stdout
