"""vLLM's OpenAI-compatible rerank server (``POST /v1/rerank``)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..base import MilvusTarget
from ..errors import ConfigurationError
from ..results import Usage
from ._http import HTTPReranker, _check_int, server_root

__all__ = ["VLLMReranker"]

#: The routes vLLM's OpenAI-compatible server answers rerank requests on.
ROUTES = ("/v1/rerank", "/rerank", "/v2/rerank")


class VLLMReranker(HTTPReranker):
    """A cross-encoder served by ``vllm serve <model> --runner pooling``.

    ``base_url`` is required (the server root, e.g. ``http://localhost:8000``). The key is
    optional: ``api_key``, else ``VLLM_API_KEY``, sent only when set (the server's
    ``--api-key``). vLLM's scores are the model's activation of the logit (the sigmoid for a
    one-label cross-encoder), so they equal ``CrossEncoderReranker`` on the same checkpoint.

    Args:
        model_name: The served model name; None lets a one-model server use its own.
        truncate_prompt_tokens: Ask vLLM to truncate each pair to this many tokens.
        route: The server's rerank route: ``/v1/rerank`` (default), ``/rerank`` or
            ``/v2/rerank`` (vLLM answers the same on all three).
        **kwargs: ``api_key``, ``base_url``, ``timeout``, ``retry``, ``max_response_bytes``,
            ``max_batch`` (default: no chunking), ``max_concurrency``, ``http_client``,
            ``http_async_client``, ``headers``; see ``HTTPReranker``.
    """

    provider: ClassVar[str] = "vllm"
    path: ClassVar[str] = "/v1/rerank"
    env_vars: ClassVar[tuple[str, ...]] = ("VLLM_API_KEY",)

    def __init__(
        self,
        model_name: str | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        route: str = "/v1/rerank",
        **kwargs: Any,
    ) -> None:
        if route not in ROUTES:
            raise ConfigurationError(
                f"VLLMReranker: route must be one of {', '.join(ROUTES)}, got {route!r}"
            )
        if truncate_prompt_tokens is not None:
            _check_int("VLLMReranker", "truncate_prompt_tokens", truncate_prompt_tokens, minimum=1)
        self.route = route
        self.truncate_prompt_tokens = truncate_prompt_tokens
        super().__init__(model_name, **kwargs)

    def _route(self) -> str:
        return self.route

    def _milvus_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """Milvus's ``vllm`` provider at this server's root; for Milvus Lite, its ``/v2`` API.

        vLLM's ``/v2/rerank`` speaks Cohere v2, which is what Milvus Lite's one provider calls.
        A keyed server needs ``credential`` for ``"milvus"``: raw keys never go to a server.
        """
        if target == "milvus-lite":
            return self._milvus_lite_cohere_params()
        params: dict[str, Any] = {"provider": "vllm", "endpoint": server_root(self.base_url)}
        if self.max_batch is not None:
            params["max_client_batch_size"] = self.max_batch
        if self.truncate_prompt_tokens is not None:
            params["truncate_prompt_tokens"] = self.truncate_prompt_tokens
        return self._with_milvus_credential(params, credential, server_knows_key=False)

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        # top_n is left out (vLLM's default 0 returns every document).
        payload: dict[str, Any] = {"query": query, "documents": documents}
        if self.model_name is not None:
            payload = {"model": self.model_name, **payload}
        if self.truncate_prompt_tokens is not None:
            payload["truncate_prompt_tokens"] = self.truncate_prompt_tokens
        return payload

    def _usage(self, body: Any) -> Usage:
        """``usage.total_tokens`` (``milvus-rerank serve`` answers null: it counts no tokens)."""
        return Usage(tokens=self._usage_count(body, "usage", "total_tokens"))
