"""Voyage AI's rerank API (``POST /v1/rerank``)."""

from __future__ import annotations

from typing import Any, ClassVar

from milvus_rerank.core.base import MilvusTarget, describe_value
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.results import Usage
from milvus_rerank.providers.api.contract import HTTPReranker
from milvus_rerank.providers.api.secrets import Secret

__all__ = ["VoyageReranker"]


class VoyageReranker(HTTPReranker):
    """Voyage AI rerankers (``rerank-2.5``, ``rerank-2.5-lite``, ``rerank-2``...).

    The key comes from ``api_key``, else ``VOYAGE_API_KEY``. The body is what the official
    ``voyageai`` SDK sends: ``top_k`` null (all documents) and ``truncation``.

    Args:
        model_name: Voyage model name.
        truncation: Let Voyage truncate inputs past the model's context (else it errors).
        **kwargs: ``api_key``, ``base_url``, ``timeout``, ``retry``, ``max_response_bytes``,
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

    def __init__(
        self,
        model_name: str | None = None,
        api_key: str | Secret | None = None,
        *,
        truncation: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(truncation, bool):  # "no" would be sent, and is truthy
            raise ConfigurationError(
                f"VoyageReranker: truncation must be a bool, got {describe_value(truncation)}"
            )
        super().__init__(model_name, api_key, **kwargs)
        self.truncation = truncation

    def _milvus_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """Milvus's ``voyageai`` provider (public API only); Milvus Lite cannot call Voyage."""
        if target == "milvus-lite":
            return super()._milvus_params(target, credential=credential)
        self._public_api_for_milvus("voyageai")
        params: dict[str, Any] = {
            "provider": "voyageai",
            "model_name": self.model_name,
            "truncation": self.truncation,
        }
        if self.max_batch is not None:
            params["max_client_batch_size"] = self.max_batch
        return self._with_milvus_credential(params, credential, server_knows_key=True)

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        return {
            "query": query,
            "documents": documents,
            "model": self.model_name,
            "top_k": None,
            "truncation": self.truncation,
        }

    def _usage(self, body: Any) -> Usage:
        """``usage.total_tokens``."""
        return Usage(tokens=self._usage_count(body, "usage", "total_tokens"))
