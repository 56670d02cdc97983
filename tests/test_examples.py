"""Each example runs as the README says (``python examples/<name>.py``) and prints a ranking.

The examples are what users copy: they import only the public API (names a public module
lists in ``__all__``) and never edit ``sys.path``.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# The command line is an application, not a library surface an example should build on.
NOT_FOR_EXAMPLES = {"milvus_rerank.app.cli"}


def _package_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every ``from milvus_rerank... import name`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.startswith("milvus_rerank")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("milvus_rerank"):
            found += [(node.module or "", alias.name) for alias in node.names]
    return found


def test_examples_are_found() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "milvus_client_rerank.py",
        "langchain_rag.py",
        "llama_index_query_engine.py",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_uses_only_the_public_api(path: Path) -> None:
    source = path.read_text("utf-8")
    assert "sys.path" not in source, f"{path.name} edits sys.path"
    for module, name in _package_imports(path):
        assert not any(part.startswith("_") for part in module.split(".")), (path.name, module)
        assert module not in NOT_FOR_EXAMPLES, (path.name, module)
        if name:
            public = getattr(importlib.import_module(module), "__all__", None)
            assert public is not None and name in public, f"{path.name}: {module}.{name} is private"


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


def readme_snippets(section: str) -> list[str]:
    """The python code blocks of the README section headed ``## <section>``."""
    text = (ROOT / "README.md").read_text("utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.mark.parametrize("section", ["Fallbacks", pytest.param("Usage", marks=pytest.mark.slow)])
def test_readme_snippets_run_and_print_what_they_say(section: str) -> None:
    snippets = readme_snippets(section)
    assert snippets
    for code in snippets:
        said = re.findall(r"^print\(.*\)\s+# (.*)$", code, flags=re.M)
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.splitlines() == said and said
