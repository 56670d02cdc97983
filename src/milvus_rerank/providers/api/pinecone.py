"""Pinecone Inference's rerank API (``POST https://api.pinecone.io/rerank``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.results import Usage
from milvus_rerank.providers.api.contract import HTTPReranker
from milvus_rerank.providers.api.options import check_header_value
from milvus_rerank.providers.api.secrets import Secret

__all__ = ["PineconeReranker"]

#: Documents per request for each hosted model (Pinecone's model guide); others get 100.
MAX_DOCUMENTS = {"bge-reranker-v2-m3": 100, "pinecone-rerank-v0": 100, "cohere-rerank-3.5": 200}


class PineconeReranker(HTTPReranker):
    """Pinecone-hosted rerankers (``bge-reranker-v2-m3``, ``cohere-rerank-3.5``...).

    The key comes from ``api_key``, else ``PINECONE_API_KEY``, and is sent in Pinecone's
    ``Api-Key`` header (not ``Authorization``), with the ``X-Pinecone-API-Version`` the
    request follows. Scores are ``data[].score``, normalized from 0 to 1.

    Args:
        model_name: Pinecone model name.
        truncate: ``"END"`` cuts pairs past the model's context; ``"NONE"`` makes Pinecone
            refuse them; None leaves ``parameters`` out (``cohere-rerank-3.5`` takes none).
        api_version: The ``X-Pinecone-API-Version`` header.
        **kwargs: ``api_key``, ``base_url``, ``timeout``, ``retry``,
            ``max_batch`` (default: the model's documented limit, 100 for unknown models),
            ``max_concurrency``, ``http_client``, ``http_async_client``, ``headers``.
    """

    provider: ClassVar[str] = "pinecone"
    path: ClassVar[str] = "/rerank"
    default_base_url: ClassVar[str | None] = "https://api.pinecone.io"
    env_vars: ClassVar[tuple[str, ...]] = ("PINECONE_API_KEY",)
    default_model: ClassVar[str | None] = "bge-reranker-v2-m3"
    default_max_batch: ClassVar[int | None] = 100
    results_key: ClassVar[str | None] = "data"
    score_key: ClassVar[str] = "score"
    auth_header: ClassVar[str] = "Api-Key"
    auth_scheme: ClassVar[str] = ""
    #: The API version this client's requests and parsing follow.
    api_version_default: ClassVar[str] = "2026-07"

    def __init__(
        self,
        model_name: str | None = None,
        api_key: str | Secret | None = None,
        *,
        truncate: Literal["END", "NONE"] | None = "END",
        api_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        if truncate not in ("END", "NONE", None):
            raise ConfigurationError(
                f"PineconeReranker: truncate must be 'END', 'NONE' or None, got {truncate!r}"
            )
        version = self.api_version_default if api_version is None else api_version
        check_header_value("PineconeReranker", "api_version", version)
        model = model_name if model_name is not None else self.default_model
        if isinstance(model, str):
            kwargs.setdefault("max_batch", MAX_DOCUMENTS.get(model, self.default_max_batch))
        super().__init__(model_name, api_key, **kwargs)
        self.truncate = truncate
        self.api_version = version

    def _provider_headers(self) -> dict[str, str]:
        return {"X-Pinecone-API-Version": self.api_version}

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        # top_n is left out: Pinecone then returns every document, which chunks need.
        payload: dict[str, Any] = {
            "model": self.model_name,
            "query": query,
            "documents": [{"text": doc} for doc in documents],
            "return_documents": False,
        }
        if self.truncate is not None:
            payload["parameters"] = {"truncate": self.truncate}
        return payload

    def _usage(self, body: Any) -> Usage:
        """``usage.rerank_units``: Pinecone bills rerank units, not tokens."""
        return Usage(rerank_units=self._usage_count(body, "usage", "rerank_units"))
