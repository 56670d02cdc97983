"""Pick a reranker by an explicit provider key, never by guessing from a model name.

Each key maps to one ``ProviderSpec``: where its class lives, whether it runs locally (torch) or
calls an API, its default model and whether it needs a server address. The command line and the
app layer read these facts from here, so they hold no provider lists of their own. Adding a
provider is one module under ``providers/`` plus one line in ``PROVIDERS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

from milvus_rerank.core.base import Reranker
from milvus_rerank.core.errors import ConfigurationError

__all__ = [
    "PROVIDERS",
    "ProviderSpec",
    "create_reranker",
    "provider_spec",
    "providers_taking",
    "reranker_class",
]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What a provider key stands for, known without importing the provider's module.

    Attributes:
        key: The provider key (``"bge"``, ``"cohere"``...).
        target: ``"module:Class"`` of the reranker class.
        kind: ``"local"`` (a model run here with torch; takes ``device``) or ``"api"`` (an
            HTTP service; takes ``base_url``).
        default_model: The model used when none is named (None: the server's own model).
        needs_base_url: The provider has no public endpoint: ``base_url`` is required.
        summary: One line for help texts.
    """

    key: str
    target: str
    kind: Literal["local", "api"]
    default_model: str | None
    needs_base_url: bool
    summary: str


def _spec(
    key: str,
    target: str,
    kind: Literal["local", "api"],
    default_model: str | None,
    summary: str,
    *,
    needs_base_url: bool = False,
) -> tuple[str, ProviderSpec]:
    return key, ProviderSpec(key, target, kind, default_model, needs_base_url, summary)


#: Provider key -> its spec. Local models need the ``local`` extra.
PROVIDERS: dict[str, ProviderSpec] = dict(
    [
        _spec(
            "bge",
            "milvus_rerank.providers.local.bge:BGEReranker",
            "local",
            "BAAI/bge-reranker-v2-m3",
            "BGE cross-encoder, scored like FlagEmbedding",
        ),
        _spec(
            "cross-encoder",
            "milvus_rerank.providers.local.cross_encoder:CrossEncoderReranker",
            "local",
            "cross-encoder/ms-marco-MiniLM-L-6-v2",
            "sentence-transformers cross-encoder",
        ),
        _spec(
            "qwen3",
            "milvus_rerank.providers.local.qwen3:Qwen3Reranker",
            "local",
            "Qwen/Qwen3-Reranker-0.6B",
            "Qwen3-Reranker LLM, scored like its model card",
        ),
        _spec(
            "bge-llm",
            "milvus_rerank.providers.local.bge_llm:BGELLMReranker",
            "local",
            "BAAI/bge-reranker-v2-gemma",
            "BGE LLM reranker (Gemma), scored like FlagLLMReranker",
        ),
        _spec(
            "mxbai-v2",
            "milvus_rerank.providers.local.mxbai:MxbaiV2Reranker",
            "local",
            "mixedbread-ai/mxbai-rerank-base-v2",
            "mxbai-rerank-v2 LLM reranker, scored like mxbai-rerank",
        ),
        _spec(
            "cohere",
            "milvus_rerank.providers.api.cohere:CohereReranker",
            "api",
            "rerank-v3.5",
            "Cohere Rerank v2 API, or a Cohere-compatible server",
        ),
        _spec(
            "voyage",
            "milvus_rerank.providers.api.voyage:VoyageReranker",
            "api",
            "rerank-2.5",
            "Voyage AI rerank API",
        ),
        _spec(
            "jina",
            "milvus_rerank.providers.api.jina:JinaReranker",
            "api",
            "jina-reranker-v2-base-multilingual",
            "Jina AI rerank API",
        ),
        _spec(
            "mixedbread",
            "milvus_rerank.providers.api.mixedbread:MixedbreadReranker",
            "api",
            "mixedbread-ai/mxbai-rerank-large-v2",
            "Mixedbread reranking API",
        ),
        _spec(
            "nvidia",
            "milvus_rerank.providers.api.nvidia:NVIDIAReranker",
            "api",
            "nvidia/llama-3.2-nv-rerankqa-1b-v2",
            "NVIDIA NIM reranking: the hosted API catalog, or a NIM of your own",
        ),
        _spec(
            "pinecone",
            "milvus_rerank.providers.api.pinecone:PineconeReranker",
            "api",
            "bge-reranker-v2-m3",
            "Pinecone Inference rerank API",
        ),
        _spec(
            "siliconflow",
            "milvus_rerank.providers.api.siliconflow:SiliconFlowReranker",
            "api",
            "BAAI/bge-reranker-v2-m3",
            "SiliconFlow rerank API",
        ),
        _spec(
            "dashscope",
            "milvus_rerank.providers.api.dashscope:DashScopeReranker",
            "api",
            "gte-rerank-v2",
            "Alibaba Cloud DashScope (Model Studio) text-rerank API",
        ),
        _spec(
            "vllm",
            "milvus_rerank.providers.api.vllm:VLLMReranker",
            "api",
            None,
            "a vLLM server (or milvus-rerank serve)",
            needs_base_url=True,
        ),
        _spec(
            "tei",
            "milvus_rerank.providers.api.tei:TEIReranker",
            "api",
            None,
            "a Text Embeddings Inference server",
            needs_base_url=True,
        ),
    ]
)


def provider_spec(provider: str) -> ProviderSpec:
    """The spec registered under ``provider``; ``ConfigurationError`` naming the choices if none."""
    spec = PROVIDERS.get(provider) if isinstance(provider, str) else None
    if spec is None:
        raise ConfigurationError(
            f"unknown reranker provider {provider!r}; choose one of {', '.join(sorted(PROVIDERS))}"
        )
    return spec


def reranker_class(provider: str) -> type[Reranker]:
    """The class registered under ``provider`` (imports its module)."""
    module, _, name = provider_spec(provider).target.partition(":")
    cls: type[Reranker] = getattr(importlib.import_module(module), name)
    return cls


def providers_taking(option: str) -> list[str]:
    """Keys of the local rerankers whose class takes ``option`` by name (e.g. ``instruction``).

    Read from each class's ``family_options`` (its constructor's keyword options), so the
    command line and ``serve`` follow the classes rather than lists of their own.
    """
    keys = []
    for key, spec in PROVIDERS.items():
        if spec.kind == "local":
            options = getattr(reranker_class(key), "family_options", None)
            if callable(options) and option in options():
                keys.append(key)
    return keys


def create_reranker(provider: str, **kwargs: Any) -> Reranker:
    """Build the reranker registered under ``provider`` with ``kwargs``.

    Example:
        >>> create_reranker("cohere", model_name="rerank-v3.5")  # doctest: +SKIP
    """
    return reranker_class(provider)(**kwargs)
