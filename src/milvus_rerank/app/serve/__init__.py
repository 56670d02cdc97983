"""``milvus-rerank serve``: any reranker over the Cohere v2, vLLM/Jina and TEI wire formats.

``create_app`` builds the Starlette app, ``run_server`` serves it under uvicorn with guarded
connections; ``ServeLimits`` holds every limit and its default. docs/serve.md is the user
manual (routes, formats, limits, authentication, health, Milvus). Importing this package
imports nothing but itself: each name loads its module on first use (so the command line
reads ``ServeLimits`` cheaply). ``milvus_rerank.app.serve.testing`` has a background server
for tests and benchmarks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from milvus_rerank.app.serve.access import check_api_key
    from milvus_rerank.app.serve.app import create_app
    from milvus_rerank.app.serve.batcher import Overloaded, RequestBatcher
    from milvus_rerank.app.serve.connections import connection_limits, uvicorn_options
    from milvus_rerank.app.serve.limits import CHARS_PER_TOKEN, ServeLimits
    from milvus_rerank.app.serve.server import run_server
    from milvus_rerank.app.serve.state import served_model_name

#: Public name -> the module (in this package) that defines it.
_LAZY = {
    "CHARS_PER_TOKEN": "limits",
    "Overloaded": "batcher",
    "RequestBatcher": "batcher",
    "ServeLimits": "limits",
    "check_api_key": "access",
    "connection_limits": "connections",
    "create_app": "app",
    "run_server": "server",
    "served_model_name": "state",
    "uvicorn_options": "connections",
}

__all__ = [
    "CHARS_PER_TOKEN",
    "Overloaded",
    "RequestBatcher",
    "ServeLimits",
    "check_api_key",
    "connection_limits",
    "create_app",
    "run_server",
    "served_model_name",
    "uvicorn_options",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
