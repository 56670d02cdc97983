"""Jina AI's rerank API (``POST /v1/rerank``)."""

from __future__ import annotations

from typing import Any, ClassVar

from milvus_rerank.core.results import Usage
from milvus_rerank.providers.api.contract import HTTPReranker

__all__ = ["JinaReranker"]


class JinaReranker(HTTPReranker):
    """Jina AI rerankers (``jina-reranker-v3``, ``jina-reranker-v2-base-multilingual``...).

    The key comes from ``api_key``, else ``JINA_API_KEY``, else ``JINAAI_API_KEY`` (LangChain
    reads the first, LlamaIndex and pymilvus-model the second). ``return_documents`` is always
    sent as false: its server default changed in 2025, and results are mapped by index.

    Args:
        model_name: Jina model name.
        **kwargs: ``api_key``, ``base_url``, ``timeout``, ``retry``, ``max_response_bytes``,
            ``max_batch`` (default 1,000; Jina documents no limit), ``max_concurrency``,
            ``http_client``, ``http_async_client``, ``headers``; see ``HTTPReranker``.
    """

    provider: ClassVar[str] = "jina"
    path: ClassVar[str] = "/v1/rerank"
    default_base_url: ClassVar[str | None] = "https://api.jina.ai"
    env_vars: ClassVar[tuple[str, ...]] = ("JINA_API_KEY", "JINAAI_API_KEY")
    default_model: ClassVar[str | None] = "jina-reranker-v2-base-multilingual"
    default_max_batch: ClassVar[int | None] = 1000

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "query": query,
            "documents": documents,
            "top_n": len(documents),
            "return_documents": False,
        }

    def _usage(self, body: Any) -> Usage:
        """``usage.total_tokens``."""
        return Usage(tokens=self._usage_count(body, "usage", "total_tokens"))
