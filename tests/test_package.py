"""The public surface: pinned exports, a light import, typed markers."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

import milvus_rerank


def test_all_is_sorted_and_complete() -> None:
    assert milvus_rerank.__all__ == sorted(milvus_rerank.__all__)
    public = {
        name
        for name, value in vars(milvus_rerank).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    public |= set(milvus_rerank._LAZY)
    public -= {"TYPE_CHECKING", "Any", "annotations"}
    assert set(milvus_rerank.__all__) - {"__version__"} == public


def test_exports_are_pinned() -> None:
    assert milvus_rerank.__all__ == [
        "AllRerankersFailedError",
        "AuthenticationError",
        "BGELLMReranker",
        "BGEReranker",
        "CachedReranker",
        "CohereReranker",
        "ConfigurationError",
        "CrossEncoderReranker",
        "DashScopeReranker",
        "FallbackReranker",
        "HTTPReranker",
        "InvalidInputError",
        "InvalidResponseError",
        "JinaReranker",
        "MissingDependencyError",
        "MixedbreadReranker",
        "MxbaiV2Reranker",
        "NVIDIAReranker",
        "PineconeReranker",
        "ProviderError",
        "ProviderUnavailableError",
        "Qwen3Reranker",
        "RateLimitError",
        "RerankError",
        "RerankResponse",
        "RerankResult",
        "Reranker",
        "RetryPolicy",
        "Secret",
        "SiliconFlowReranker",
        "TEIReranker",
        "Usage",
        "VLLMReranker",
        "VoyageReranker",
        "__version__",
        "create_reranker",
    ]


def test_every_exported_name_resolves() -> None:
    for name in milvus_rerank.__all__:
        assert getattr(milvus_rerank, name) is not None


def test_import_is_light() -> None:
    code = (
        "import sys, milvus_rerank; heavy = [m for m in ('torch', 'transformers', "
        "'langchain_core', 'llama_index', 'pymilvus', 'httpx', 'numpy', "
        "'milvus_rerank.providers') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        milvus_rerank.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_py_typed_ships() -> None:
    assert (Path(milvus_rerank.__file__).parent / "py.typed").is_file()


#: The house's sizes (docs/architecture.md): past them a room usually holds a second job.
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_CLASS_LINES = 600, 80, 400


def test_no_room_is_past_the_house_sizes() -> None:
    import ast

    source = Path(milvus_rerank.__file__).resolve().parent
    over = []
    for path in sorted(source.rglob("*.py")):
        text = path.read_text("utf-8")
        name = path.relative_to(source)
        if text.count("\n") > MAX_FILE_LINES:
            over.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                if size > limit:
                    over.append(f"{name}:{node.lineno} {node.name}: {size} lines")
    assert over == []


def test_old_public_import_paths_still_work() -> None:
    """The modules users import by path kept their paths when the code moved into folders."""
    from milvus_rerank.cache import CachedReranker
    from milvus_rerank.integrations.milvus import rerank_hits as moved
    from milvus_rerank.milvus import rerank_hits
    from milvus_rerank.registry import PROVIDERS
    from milvus_rerank.wrappers.cache import CachedReranker as moved_cache

    assert rerank_hits is moved and CachedReranker is moved_cache
    assert "cohere" in PROVIDERS


@pytest.mark.parametrize(
    "old",
    ["milvus_rerank.tiny", "milvus_rerank.errors", "milvus_rerank.fallback", "milvus_rerank.serve"]
    + ["milvus_rerank.providers.cohere", "milvus_rerank.providers.bge"],
)
def test_module_paths_of_before_the_layer_folders_still_import(old: str) -> None:
    """``milvus_rerank.tiny`` and the like are the modules at their new paths, one object."""
    import importlib

    from milvus_rerank._moved import MOVED

    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_every_moved_path_names_a_module() -> None:
    import importlib.util

    from milvus_rerank._moved import MOVED

    assert all(importlib.util.find_spec(new) is not None for new in MOVED.values())


#: Past this a test file usually tests two things (docs/architecture.md, "Tests").
MAX_TEST_FILE_LINES = 800


def test_no_test_file_is_past_800_lines() -> None:
    tests = Path(__file__).resolve().parent
    long = [
        f"{path.relative_to(tests)}: {lines}"
        for path in sorted(tests.rglob("*.py"))
        if (lines := path.read_text("utf-8").count("\n")) > MAX_TEST_FILE_LINES
    ]
    assert long == []
