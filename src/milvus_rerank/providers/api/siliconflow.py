"""SiliconFlow's rerank API (``POST /v1/rerank``), which Milvus can also call itself."""

from __future__ import annotations

from typing import Any, ClassVar

from milvus_rerank.core.base import MilvusTarget
from milvus_rerank.core.checks import int_at_least
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.results import Usage, bounded_count
from milvus_rerank.providers.api.contract import HTTPReranker
from milvus_rerank.providers.api.secrets import Secret

__all__ = ["SiliconFlowReranker"]


class SiliconFlowReranker(HTTPReranker):
    """SiliconFlow rerankers (``BAAI/bge-reranker-v2-m3``, ``Qwen/Qwen3-Reranker-8B``...).

    The key comes from ``api_key``, else ``SILICONFLOW_API_KEY``. For the chunking models
    (``BAAI/bge-reranker-v2-m3``, ``netease-youdao/bce-reranker-base_v1``) SiliconFlow splits
    a long document into chunks and scores it by its best chunk; ``relevance_score`` is 0 to 1.

    Args:
        model_name: SiliconFlow model name.
        max_chunks_per_doc: Chunks a long document is split into at most (server default 1024).
        overlap_tokens: Tokens shared by neighbouring chunks, 0 to 80.
        **kwargs: ``api_key``, ``base_url``, ``timeout``, ``retry``,
            ``max_batch`` (default: no chunking; SiliconFlow documents no count limit),
            ``max_concurrency``, ``http_client``, ``http_async_client``, ``headers``.
    """

    provider: ClassVar[str] = "siliconflow"
    path: ClassVar[str] = "/v1/rerank"
    default_base_url: ClassVar[str | None] = "https://api.siliconflow.cn"
    env_vars: ClassVar[tuple[str, ...]] = ("SILICONFLOW_API_KEY",)
    default_model: ClassVar[str | None] = "BAAI/bge-reranker-v2-m3"

    def __init__(
        self,
        model_name: str | None = None,
        api_key: str | Secret | None = None,
        *,
        max_chunks_per_doc: int | None = None,
        overlap_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        if max_chunks_per_doc is not None:
            int_at_least("max_chunks_per_doc", max_chunks_per_doc, 1, owner=name)
        if overlap_tokens is not None:
            int_at_least("overlap_tokens", overlap_tokens, 0, owner=name)
            if overlap_tokens > 80:
                raise ConfigurationError(
                    f"{name}: overlap_tokens must be at most 80, got {overlap_tokens!r}"
                )
        super().__init__(model_name, api_key, **kwargs)
        self.max_chunks_per_doc = max_chunks_per_doc
        self.overlap_tokens = overlap_tokens

    def _milvus_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """Milvus's ``siliconflow`` provider (public API only); Milvus Lite cannot call it."""
        if target == "milvus-lite":
            return super()._milvus_params(target, credential=credential)
        self._public_api_for_milvus("siliconflow")
        params: dict[str, Any] = {"provider": "siliconflow", "model_name": self.model_name}
        if self.max_batch is not None:
            params["max_client_batch_size"] = self.max_batch
        if self.max_chunks_per_doc is not None:
            params["max_chunks_per_doc"] = self.max_chunks_per_doc
        if self.overlap_tokens is not None:
            params["overlap_tokens"] = self.overlap_tokens
        return self._with_milvus_credential(params, credential, server_knows_key=True)

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        # top_n is left out: SiliconFlow then returns every document, which chunks need.
        payload: dict[str, Any] = {
            "model": self.model_name,
            "query": query,
            "documents": documents,
            "return_documents": False,
        }
        if self.max_chunks_per_doc is not None:
            payload["max_chunks_per_doc"] = self.max_chunks_per_doc
        if self.overlap_tokens is not None:
            payload["overlap_tokens"] = self.overlap_tokens
        return payload

    def _usage(self, body: Any) -> Usage:
        """``tokens.input_tokens`` plus ``tokens.output_tokens`` (0 for rerank), top level."""
        tokens = self._usage_count(body, "tokens", "input_tokens")
        if tokens is not None:
            tokens = bounded_count(
                tokens + (self._usage_count(body, "tokens", "output_tokens") or 0)
            )
        return Usage(tokens=tokens)
