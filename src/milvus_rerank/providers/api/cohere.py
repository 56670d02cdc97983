"""Cohere's v2 rerank API (``POST /v2/rerank``), and any server that speaks it."""

from __future__ import annotations

from typing import Any, ClassVar

from milvus_rerank.core.base import MilvusTarget
from milvus_rerank.core.checks import int_at_least
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.results import Usage, bounded_count
from milvus_rerank.providers.api.contract import HTTPReranker
from milvus_rerank.providers.api.options import server_root
from milvus_rerank.providers.api.secrets import Secret

__all__ = ["CohereReranker"]


class CohereReranker(HTTPReranker):
    """Cohere Rerank v2 (``rerank-v3.5``, ``rerank-v4.0-pro``...), or a Cohere-compatible server.

    The key comes from ``api_key``, else ``COHERE_API_KEY``, else ``CO_API_KEY``; it is only
    required for Cohere's own API, so a self-hosted Cohere-compatible ``/v2/rerank`` (vLLM,
    ``milvus-rerank serve``) works with ``base_url`` alone. The variables are sent to Cohere's
    API only: a keyed compatible server gets its key from ``api_key``.

    Args:
        model_name: Cohere model name.
        max_tokens_per_doc: Cohere truncates each document to this many tokens (server
            default 4096); None leaves the field out.
        **kwargs: ``api_key``, ``base_url``, ``timeout``, ``retry``, ``max_response_bytes``,
            ``max_batch`` (default 1,000, Cohere's recommended maximum), ``max_concurrency``,
            ``http_client``, ``http_async_client``, ``headers``; see ``HTTPReranker``.
    """

    provider: ClassVar[str] = "cohere"
    path: ClassVar[str] = "/v2/rerank"
    default_base_url: ClassVar[str | None] = "https://api.cohere.com"
    env_vars: ClassVar[tuple[str, ...]] = ("COHERE_API_KEY", "CO_API_KEY")
    base_url_env: ClassVar[str | None] = "CO_API_URL"
    base_url_env_keys: ClassVar[tuple[str, ...]] = ("CO_API_KEY",)
    default_model: ClassVar[str | None] = "rerank-v3.5"
    default_max_batch: ClassVar[int | None] = 1000

    def __init__(
        self,
        model_name: str | None = None,
        api_key: str | Secret | None = None,
        *,
        max_tokens_per_doc: int | None = None,
        return_documents: bool = True,
        **kwargs: Any,
    ) -> None:
        if max_tokens_per_doc is not None:
            int_at_least("max_tokens_per_doc", max_tokens_per_doc, 1, owner="CohereReranker")
        if not isinstance(return_documents, bool):
            raise ConfigurationError(
                f"CohereReranker: return_documents must be a bool, got {return_documents!r}"
            )
        # Taken for pymilvus-model's CohereRerankFunction: a result's text is always its
        # document here (the call has them), so nothing is asked of the server either way.
        super().__init__(model_name, api_key, **kwargs)
        self.max_tokens_per_doc = max_tokens_per_doc

    def _milvus_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """Milvus's ``cohere`` provider (public API only), or Milvus Lite's, at this server.

        A Milvus server finds the Cohere key itself (its milvus.yaml or environment) unless
        ``credential`` names one. A self-hosted ``base_url`` is refused for ``"milvus"``.
        """
        if target == "milvus-lite":
            return self._milvus_lite_cohere_params()
        self._public_api_for_milvus("cohere")
        params: dict[str, Any] = {"provider": "cohere", "model_name": self.model_name}
        if self.max_batch is not None:
            params["max_client_batch_size"] = self.max_batch
        if self.max_tokens_per_doc is not None:
            params["max_tokens_per_doc"] = self.max_tokens_per_doc
        return self._with_milvus_credential(params, credential, server_knows_key=True)

    def _env_base_url(self, url: str) -> str:
        """``CO_API_URL`` read as Cohere's SDK (5.13.11 on) reads it: requests go where its went.

        That is ``<url>/v2/rerank``, with a trailing ``/v1`` dropped only from a URL of
        Cohere's own (``cohere.com``, ``cohere.ai``). Another trailing version segment stays
        part of the prefix (``https://gw/v1`` posts to ``https://gw/v1/v2/rerank``); a
        trailing ``/v2`` is not doubled (the SDK would post to ``.../v2/v2/rerank``).
        """
        if "cohere.com" in url or "cohere.ai" in url:
            url = url.removesuffix("/v1")
        if server_root(url) != url and not url.endswith("/v2"):
            url += "/v2"  # the version segment is a prefix: the route's /v2 must follow it
        return url

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        # top_n is left out: Cohere then returns every document, which chunks need.
        payload: dict[str, Any] = {"model": self.model_name, "query": query, "documents": documents}
        if self.max_tokens_per_doc is not None:
            payload["max_tokens_per_doc"] = self.max_tokens_per_doc
        return payload

    def _usage(self, body: Any) -> Usage:
        """``meta.billed_units.search_units``, and tokens from ``meta.tokens`` when present.

        A Cohere-compatible server that answers vLLM's ``usage.total_tokens`` instead (vLLM's
        ``/v2/rerank``) has its tokens read from there.
        """
        tokens = self._usage_count(body, "meta", "tokens", "input_tokens")
        if tokens is not None:
            output = self._usage_count(body, "meta", "tokens", "output_tokens")
            tokens = bounded_count(tokens + (output or 0))
        else:
            tokens = self._usage_count(body, "usage", "total_tokens")
        return Usage(
            tokens=tokens,
            search_units=self._usage_count(body, "meta", "billed_units", "search_units"),
        )
