"""Pick a reranker by an explicit provider key, never by guessing from a model name."""

from __future__ import annotations

import importlib
from typing import Any

from .base import Reranker
from .errors import ConfigurationError

__all__ = ["PROVIDERS", "create_reranker", "reranker_class"]

#: Provider key -> "module:Class". Local models need the ``local`` extra.
PROVIDERS: dict[str, str] = {
    "bge": "milvus_rerank.providers.bge:BGEReranker",
    "cross-encoder": "milvus_rerank.providers.cross_encoder:CrossEncoderReranker",
    "cohere": "milvus_rerank.providers.cohere:CohereReranker",
    "voyage": "milvus_rerank.providers.voyage:VoyageReranker",
    "jina": "milvus_rerank.providers.jina:JinaReranker",
    "vllm": "milvus_rerank.providers.vllm:VLLMReranker",
    "tei": "milvus_rerank.providers.tei:TEIReranker",
}


def reranker_class(provider: str) -> type[Reranker]:
    """The class registered under ``provider``."""
    target = PROVIDERS.get(provider)
    if target is None:
        raise ConfigurationError(
            f"unknown reranker provider {provider!r}; choose one of {', '.join(sorted(PROVIDERS))}"
        )
    module, _, name = target.partition(":")
    cls: type[Reranker] = getattr(importlib.import_module(module), name)
    return cls


def create_reranker(provider: str, **kwargs: Any) -> Reranker:
    """Build the reranker registered under ``provider`` with ``kwargs``.

    Example:
        >>> create_reranker("cohere", model="rerank-v3.5")  # doctest: +SKIP
    """
    return reranker_class(provider)(**kwargs)
