"""Module paths from before the code moved into layer folders, still importable.

``import milvus_rerank.tiny`` (or ``from milvus_rerank.providers.cohere import ...``) loads the
module at its new path and registers it under the old name too, so code written against the
old layout keeps working. The map is the one record of what moved where.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["MOVED", "install"]

_PACKAGE = "milvus_rerank"
_API = ("cohere", "dashscope", "jina", "mixedbread", "nvidia", "pinecone", "siliconflow", "tei")
_LOCAL = ("bge", "bge_llm", "cross_encoder", "mxbai", "qwen3")

#: Old module path → where it lives now, both relative to the package (each target is imported
#: only when its old path is, so the map adds no import to the package's own graph).
_RELATIVE: dict[str, str] = {
    "base": "core.base",
    "errors": "core.errors",
    "results": "core.results",
    "retry": "core.retry",
    "fallback": "wrappers.fallback",
    "demo": "app.demo",
    "evaluate": "app.evaluate",
    "serve": "app.serve",
    "tiny": "providers.local.tiny",
    **{f"providers.{name}": f"providers.api.{name}" for name in (*_API, "vllm", "voyage")},
    **{f"providers.{name}": f"providers.local.{name}" for name in _LOCAL},
}
#: Old module path → where it lives now.
MOVED = {f"{_PACKAGE}.{old}": f"{_PACKAGE}.{new}" for old, new in _RELATIVE.items()}


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module at its new path (one module object, two names)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        """The module at its new path, imported now."""
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module ran when it was imported at its new path."""


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths in ``MOVED``; every other name is left to the usual finders."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """A spec that aliases ``fullname`` to its new path, if it moved."""
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``milvus_rerank/__init__`` calls it)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
