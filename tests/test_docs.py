"""The code in ``docs/llm_rerankers.md`` runs as written, with tiny checkpoints for the models.

Each ``python`` block runs on its own, in a namespace holding what the prose leaves to the
reader (``documents``, ``question``, ``snippets``, a LangChain ``vector_store``, a LlamaIndex
``index``), with the LLM reranker classes building tiny random checkpoints on the CPU instead of
downloading the real ones. Each ``milvus-rerank`` line of the ``bash`` blocks must parse; the
``rerank`` lines run. A block that cannot run here (it needs a live server) is marked by a line
``<!-- docs-test: skip (why) -->`` right before it. The README's table of local options holds
every ``LocalOptions`` key with its default.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import milvus_rerank  # noqa: E402
from milvus_rerank.app.cli import main, make_parser  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "llm_rerankers.md"
_BLOCK = re.compile(r"(<!-- docs-test: skip[^>]*-->\s*)?```(\w+)\n(.*?)```", re.DOTALL)
LLM_CLASSES = ("Qwen3Reranker", "BGELLMReranker", "MxbaiV2Reranker")


def blocks(language: str) -> list[str]:
    """The ``language`` blocks of the page that are not marked to skip, in order."""
    return [
        code
        for skip, lang, code in _BLOCK.findall(DOC.read_text("utf-8"))
        if lang == language
        if not skip
    ]


@pytest.fixture(scope="module")
def tiny_llms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("docs-llm")
    return {
        name: getattr(milvus_rerank, name).build_tiny_checkpoint(root / name)
        for name in LLM_CLASSES
    }


@pytest.fixture
def tiny_classes(tiny_llms: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """``from milvus_rerank import Qwen3Reranker`` gives a class over its tiny checkpoint."""
    for name, path in tiny_llms.items():
        real = getattr(milvus_rerank, name)

        def init(self: Any, model_name: object = None, *, _p: Path = path, **kw: Any) -> None:
            type(self).__mro__[1].__init__(self, str(_p), **{**kw, "device": "cpu"})

        monkeypatch.setattr(milvus_rerank, name, type(name, (real,), {"__init__": init}))


class _Index:
    """The reader's LlamaIndex index; its query engine gets a stand-in LLM (no API key here)."""

    def __init__(self, texts: list[str]) -> None:
        from llama_index.core import Document, VectorStoreIndex
        from llama_index.core.embeddings import MockEmbedding

        docs = [Document(text=t) for t in texts]
        self.index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))

    def as_query_engine(self, **options: Any) -> Any:
        from llama_index.core.llms import MockLLM

        return self.index.as_query_engine(llm=MockLLM(), **options)


TEXTS = [
    "Paris is the capital of France.",
    "Berlin is in Germany.",
    "printer error 0x1F: reinstall",
]


def _namespace(code: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {
        "documents": TEXTS,
        "question": "how do I sort a list in python",
        "snippets": ["sorted(xs)", "xs.sort()", "print(1)"],
    }
    if "vector_store" in code:
        pytest.importorskip("langchain_classic")
        from langchain_core.embeddings import DeterministicFakeEmbedding
        from langchain_core.vectorstores import InMemoryVectorStore

        embedding = DeterministicFakeEmbedding(size=16)
        namespace["vector_store"] = InMemoryVectorStore.from_texts(TEXTS, embedding)
    if "index." in code:
        pytest.importorskip("llama_index.core")
        namespace["index"] = _Index(TEXTS)
    return namespace


def test_the_page_has_code() -> None:
    assert len(blocks("python")) >= 4 and blocks("bash")


@pytest.mark.parametrize("number", range(len(blocks("python"))))
@pytest.mark.usefixtures("tiny_classes")
def test_python_block_runs(number: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = blocks("python")[number]
    namespace = _namespace(code)
    exec(compile(code, f"{DOC.name}[python {number}]", "exec"), namespace)  # noqa: S102
    if "query_engine" in namespace:
        answer = namespace["query_engine"].query("capital of france")
        assert answer.source_nodes and all(n.score is not None for n in answer.source_nodes)
    if "retriever" in namespace:
        assert all("relevance_score" in d.metadata for d in namespace["docs"])
    if "hit" in namespace:
        printed = capsys.readouterr().out.splitlines()
        assert len(printed) == len(TEXTS) and printed[0].split()[0].isdigit()


def _command_lines() -> list[list[str]]:
    return [
        shlex.split(line, comments=True)[1:]
        for block in blocks("bash")
        for line in block.splitlines()
        if line.startswith("milvus-rerank ")
    ]


@pytest.mark.parametrize("argv", _command_lines(), ids=lambda argv: " ".join(argv[:4]))
def test_command_line_parses(argv: list[str]) -> None:
    make_parser().parse_args(argv)


@pytest.mark.usefixtures("tiny_classes")
def test_rerank_command_lines_run(
    tiny_llms: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("docs.jsonl").write_text("\n".join(json.dumps(t) for t in TEXTS) + "\n", "utf-8")
    ran = 0
    for argv in _command_lines():
        if argv[0] == "rerank":
            model = str(tiny_llms["Qwen3Reranker"])
            assert main([*argv, "--model", model, "--device", "cpu"]) == 0, argv
            assert len(capsys.readouterr().out.splitlines()) == len(TEXTS)
            ran += 1
    assert ran >= 2


README = DOC.parents[1] / "README.md"
_OPTION_ROW = re.compile(r"^\| `(\w+)` \| `([^`]*)` \|", re.MULTILINE)


def test_the_readme_lists_every_local_option_with_its_default() -> None:
    """The README's local options table holds every ``LocalOptions`` key, each with its default."""
    import ast

    from milvus_rerank.providers.local.options import LOCAL_DEFAULTS

    text = README.read_text("utf-8")
    table = text[text.index("| local option | default |") :].split("\n\n", 1)[0]
    rows = {key: ast.literal_eval(default) for key, default in _OPTION_ROW.findall(table)}
    assert sorted(rows) == sorted(LOCAL_DEFAULTS), "README local options table"
    for key, default in LOCAL_DEFAULTS.items():
        assert rows[key] == default and type(rows[key]) is type(default), key
