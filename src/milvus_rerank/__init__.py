"""milvus-rerank: one ``Reranker`` interface over local and API rerankers, for RAG on Milvus.

``import milvus_rerank`` stays light: the local models (torch), the HTTP providers and the
framework adapters load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from milvus_rerank import _moved
from milvus_rerank._version import __version__
from milvus_rerank.core.base import Reranker, RerankResponse
from milvus_rerank.core.errors import (
    AllRerankersFailedError,
    AuthenticationError,
    ConfigurationError,
    InvalidInputError,
    InvalidResponseError,
    MissingDependencyError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    RerankError,
)
from milvus_rerank.core.results import RerankResult, Usage
from milvus_rerank.core.retry import RetryPolicy
from milvus_rerank.wrappers.fallback import FallbackReranker

if TYPE_CHECKING:
    from milvus_rerank.core.registry import create_reranker
    from milvus_rerank.providers.api.cohere import CohereReranker
    from milvus_rerank.providers.api.contract import HTTPReranker
    from milvus_rerank.providers.api.dashscope import DashScopeReranker
    from milvus_rerank.providers.api.jina import JinaReranker
    from milvus_rerank.providers.api.mixedbread import MixedbreadReranker
    from milvus_rerank.providers.api.nvidia import NVIDIAReranker
    from milvus_rerank.providers.api.pinecone import PineconeReranker
    from milvus_rerank.providers.api.secrets import Secret
    from milvus_rerank.providers.api.siliconflow import SiliconFlowReranker
    from milvus_rerank.providers.api.tei import TEIReranker
    from milvus_rerank.providers.api.vllm import VLLMReranker
    from milvus_rerank.providers.api.voyage import VoyageReranker
    from milvus_rerank.providers.local.bge import BGEReranker
    from milvus_rerank.providers.local.bge_llm import BGELLMReranker
    from milvus_rerank.providers.local.cross_encoder import CrossEncoderReranker
    from milvus_rerank.providers.local.mxbai import MxbaiV2Reranker
    from milvus_rerank.providers.local.qwen3 import Qwen3Reranker
    from milvus_rerank.wrappers.cache import CachedReranker


_moved.install()  # the module paths of before the layer folders stay importable

_LAZY = {
    "BGELLMReranker": "milvus_rerank.providers.local.bge_llm",
    "BGEReranker": "milvus_rerank.providers.local.bge",
    "CachedReranker": "milvus_rerank.wrappers.cache",
    "CohereReranker": "milvus_rerank.providers.api.cohere",
    "CrossEncoderReranker": "milvus_rerank.providers.local.cross_encoder",
    "DashScopeReranker": "milvus_rerank.providers.api.dashscope",
    "HTTPReranker": "milvus_rerank.providers.api.contract",
    "JinaReranker": "milvus_rerank.providers.api.jina",
    "MixedbreadReranker": "milvus_rerank.providers.api.mixedbread",
    "MxbaiV2Reranker": "milvus_rerank.providers.local.mxbai",
    "NVIDIAReranker": "milvus_rerank.providers.api.nvidia",
    "PineconeReranker": "milvus_rerank.providers.api.pinecone",
    "Qwen3Reranker": "milvus_rerank.providers.local.qwen3",
    "Secret": "milvus_rerank.providers.api.secrets",
    "SiliconFlowReranker": "milvus_rerank.providers.api.siliconflow",
    "TEIReranker": "milvus_rerank.providers.api.tei",
    "VLLMReranker": "milvus_rerank.providers.api.vllm",
    "VoyageReranker": "milvus_rerank.providers.api.voyage",
    "create_reranker": "milvus_rerank.core.registry",
}

__all__ = [
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'milvus_rerank' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
