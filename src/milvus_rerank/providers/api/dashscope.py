"""Alibaba Cloud Model Studio's (DashScope) text-rerank API, which Milvus can call as ``ali``."""

from __future__ import annotations

from typing import Any, ClassVar

from milvus_rerank.core.base import MilvusTarget
from milvus_rerank.core.results import Usage
from milvus_rerank.providers.api.contract import HTTPReranker

__all__ = ["DashScopeReranker"]


class DashScopeReranker(HTTPReranker):
    """DashScope text rerankers (``gte-rerank-v2``, ``qwen3-rerank``).

    The key comes from ``api_key``, else ``DASHSCOPE_API_KEY``. The request nests the texts in
    ``input`` and the options in ``parameters``; the answer's ``output.results`` hold a
    ``relevance_score`` from 0 to 1 per document. DashScope cuts each document to 4,000
    tokens and takes at most 500 documents (and 30,000 tokens) per request.

    Args:
        model_name: DashScope model name.
        **kwargs: ``api_key``, ``base_url`` (e.g. ``https://dashscope-intl.aliyuncs.com``
            for the Singapore region), ``timeout``, ``retry``, ``max_batch`` (default 500),
            ``max_concurrency``, ``http_client``, ``http_async_client``, ``headers``.
    """

    provider: ClassVar[str] = "dashscope"
    path: ClassVar[str] = "/api/v1/services/rerank/text-rerank/text-rerank"
    default_base_url: ClassVar[str | None] = "https://dashscope.aliyuncs.com"
    env_vars: ClassVar[tuple[str, ...]] = ("DASHSCOPE_API_KEY",)
    key_hosts: ClassVar[tuple[str, ...]] = ("dashscope-intl.aliyuncs.com",)
    default_model: ClassVar[str | None] = "gte-rerank-v2"
    default_max_batch: ClassVar[int | None] = 500

    def _milvus_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """Milvus's ``ali`` provider (public API only); Milvus Lite cannot call DashScope."""
        if target == "milvus-lite":
            return super()._milvus_params(target, credential=credential)
        self._public_api_for_milvus("ali")
        params: dict[str, Any] = {"provider": "ali", "model_name": self.model_name}
        if self.max_batch is not None:
            params["max_client_batch_size"] = self.max_batch
        return self._with_milvus_credential(params, credential, server_knows_key=True)

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        # top_n is left out: DashScope then returns every document, which chunks need.
        return {
            "model": self.model_name,
            "input": {"query": query, "documents": documents},
            "parameters": {"return_documents": False},
        }

    def _results(self, body: Any) -> Any:
        output = body.get("output") if isinstance(body, dict) else None
        if not isinstance(output, dict) or "results" not in output:
            raise ValueError("expected a JSON object with 'output': {'results': [...]}")
        return output["results"]

    def _usage(self, body: Any) -> Usage:
        """``usage.total_tokens``."""
        return Usage(tokens=self._usage_count(body, "usage", "total_tokens"))
