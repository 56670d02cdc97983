"""Voyage AI's rerank API (``POST /v1/rerank``)."""

from __future__ import annotations

from typing import Any, ClassVar

from ._http import HTTPReranker

__all__ = ["VoyageReranker"]


class VoyageReranker(HTTPReranker):
    """Voyage AI rerankers (``rerank-2.5``, ``rerank-2.5-lite``, ``rerank-2``...).

    The key comes from ``api_key``, else ``VOYAGE_API_KEY``. The body is what the official
    ``voyageai`` SDK sends: ``top_k`` null (all documents) and ``truncation``.

    Args:
        model: Voyage model name.
        truncation: Let Voyage truncate inputs past the model's context (else it errors).
        **kwargs: ``api_key``, ``base_url``, ``timeout``, ``max_retries``, ``deadline``,
            ``max_batch`` (default 1,000, Voyage's per-request limit), ``max_concurrency``,
            ``http_client``, ``http_async_client``, ``headers``; see ``HTTPReranker``.
    """

    provider: ClassVar[str] = "voyage"
    path: ClassVar[str] = "/v1/rerank"
    default_base_url: ClassVar[str | None] = "https://api.voyageai.com"
    env_vars: ClassVar[tuple[str, ...]] = ("VOYAGE_API_KEY",)
    default_model: ClassVar[str | None] = "rerank-2.5"
    default_max_batch: ClassVar[int | None] = 1000
    results_key: ClassVar[str | None] = "data"

    def __init__(self, model: str | None = None, *, truncation: bool = True, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.truncation = truncation

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        return {
            "query": query,
            "documents": documents,
            "model": self.model,
            "top_k": None,
            "truncation": self.truncation,
        }
