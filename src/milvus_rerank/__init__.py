"""milvus-rerank: one ``Reranker`` interface over local and API rerankers, for RAG on Milvus.

``import milvus_rerank`` stays light: the local models (torch), the HTTP providers and the
framework adapters load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .base import Reranker, RerankResponse
from .errors import (
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
from .fallback import FallbackReranker
from .results import RerankResult, Usage
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .providers._http import HTTPReranker, Secret
    from .providers.bge import BGEReranker
    from .providers.bge_llm import BGELLMReranker
    from .providers.cohere import CohereReranker
    from .providers.cross_encoder import CrossEncoderReranker
    from .providers.dashscope import DashScopeReranker
    from .providers.jina import JinaReranker
    from .providers.mixedbread import MixedbreadReranker
    from .providers.mxbai import MxbaiV2Reranker
    from .providers.nvidia import NVIDIAReranker
    from .providers.pinecone import PineconeReranker
    from .providers.qwen3 import Qwen3Reranker
    from .providers.siliconflow import SiliconFlowReranker
    from .providers.tei import TEIReranker
    from .providers.vllm import VLLMReranker
    from .providers.voyage import VoyageReranker
    from .registry import create_reranker


_LAZY = {
    "BGELLMReranker": "milvus_rerank.providers.bge_llm",
    "BGEReranker": "milvus_rerank.providers.bge",
    "CohereReranker": "milvus_rerank.providers.cohere",
    "CrossEncoderReranker": "milvus_rerank.providers.cross_encoder",
    "DashScopeReranker": "milvus_rerank.providers.dashscope",
    "HTTPReranker": "milvus_rerank.providers._http",
    "JinaReranker": "milvus_rerank.providers.jina",
    "MixedbreadReranker": "milvus_rerank.providers.mixedbread",
    "MxbaiV2Reranker": "milvus_rerank.providers.mxbai",
    "NVIDIAReranker": "milvus_rerank.providers.nvidia",
    "PineconeReranker": "milvus_rerank.providers.pinecone",
    "Qwen3Reranker": "milvus_rerank.providers.qwen3",
    "Secret": "milvus_rerank.providers._http",
    "SiliconFlowReranker": "milvus_rerank.providers.siliconflow",
    "TEIReranker": "milvus_rerank.providers.tei",
    "VLLMReranker": "milvus_rerank.providers.vllm",
    "VoyageReranker": "milvus_rerank.providers.voyage",
    "create_reranker": "milvus_rerank.registry",
}

__all__ = [
    "AllRerankersFailedError",
    "AuthenticationError",
    "BGELLMReranker",
    "BGEReranker",
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
