"""Mixedbread's reranking API (``POST /v1/reranking``)."""

from __future__ import annotations

from typing import Any, ClassVar

from milvus_rerank.core.results import Usage
from milvus_rerank.providers.api.contract import HTTPReranker

__all__ = ["MixedbreadReranker"]


class MixedbreadReranker(HTTPReranker):
    """Mixedbread rerankers (``mixedbread-ai/mxbai-rerank-large-v2``, ``...-base-v2``...).

    The key comes from ``api_key``, else ``MXBAI_API_KEY``. Documents go in ``input`` and come
    back as ``data[].score`` (0 to 1, higher is more relevant). Mixedbread truncates documents
    past the model's context itself and takes at most 1,000 documents per request.

    Args:
        model_name: Mixedbread model name.
        **kwargs: ``api_key``, ``base_url``, ``timeout``, ``retry``,
            ``max_batch`` (default 1,000, Mixedbread's per-request limit), ``max_concurrency``,
            ``http_client``, ``http_async_client``, ``headers``; see ``HTTPReranker``.
    """

    provider: ClassVar[str] = "mixedbread"
    path: ClassVar[str] = "/v1/reranking"
    default_base_url: ClassVar[str | None] = "https://api.mixedbread.com"
    env_vars: ClassVar[tuple[str, ...]] = ("MXBAI_API_KEY",)
    default_model: ClassVar[str | None] = "mixedbread-ai/mxbai-rerank-large-v2"
    default_max_batch: ClassVar[int | None] = 1000
    results_key: ClassVar[str | None] = "data"
    score_key: ClassVar[str] = "score"

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        # top_k is left out: Mixedbread then returns every document, which chunks need.
        return {
            "model": self.model_name,
            "query": query,
            "input": documents,
            "return_input": False,
        }

    def _usage(self, body: Any) -> Usage:
        """``usage.total_tokens``."""
        return Usage(tokens=self._usage_count(body, "usage", "total_tokens"))
