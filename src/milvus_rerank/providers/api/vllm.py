"""vLLM's OpenAI-compatible rerank server (``POST /v1/rerank``)."""

from __future__ import annotations

import string
from typing import Any, ClassVar

from milvus_rerank.core.base import MilvusTarget
from milvus_rerank.core.checks import int_at_least
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.results import Usage
from milvus_rerank.providers.api.contract import HTTPReranker
from milvus_rerank.providers.api.options import server_root
from milvus_rerank.providers.api.secrets import Secret

__all__ = ["VLLMReranker"]

#: The routes vLLM's OpenAI-compatible server answers rerank requests on.
ROUTES = ("/v1/rerank", "/rerank", "/v2/rerank")


class VLLMReranker(HTTPReranker):
    """A cross-encoder served by ``vllm serve <model> --runner pooling``.

    ``base_url`` is required (the server root, e.g. ``http://localhost:8000``). The key is
    optional: ``api_key``, else ``VLLM_API_KEY``, sent only when set (the server's
    ``--api-key``). vLLM's scores are the model's activation of the logit (the sigmoid for a
    one-label cross-encoder), so they equal ``CrossEncoderReranker`` on the same checkpoint.

    An LLM reranker served with ``--hf-overrides`` (a Qwen3-Reranker as a sequence classifier)
    scores the text it is sent: vLLM adds no prompt of its own. ``query_template`` and
    ``document_template`` write that prompt on the client, pair by pair; the results still
    carry the caller's documents. ``Qwen3Reranker.vllm_templates()`` gives the model card's.

    Args:
        model_name: The served model name; None lets a one-model server use its own.
        truncate_prompt_tokens: Ask vLLM to truncate each pair to this many tokens.
        route: The server's rerank route: ``/v1/rerank`` (default), ``/rerank`` or
            ``/v2/rerank`` (vLLM answers the same on all three).
        query_template: Sent in place of each query: a ``str.format`` string whose one field
            is ``{query}`` (literal braces doubled). None sends the query as it is.
        document_template: Likewise for each document, with the one field ``{document}``.
            vLLM's ``truncate_prompt_tokens`` then cuts the whole prompt from the end, the
            template's closing text first: keep pairs within the server's ``--max-model-len``.
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
        api_key: str | Secret | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        route: str = "/v1/rerank",
        query_template: str | None = None,
        document_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        if route not in ROUTES:
            raise ConfigurationError(
                f"VLLMReranker: route must be one of {', '.join(ROUTES)}, got {route!r}"
            )
        if truncate_prompt_tokens is not None:
            int_at_least("truncate_prompt_tokens", truncate_prompt_tokens, 1, owner="VLLMReranker")
        self.route = route
        self.truncate_prompt_tokens = truncate_prompt_tokens
        self.query_template = _check_template("query_template", query_template, "query")
        self.document_template = _check_template("document_template", document_template, "document")
        super().__init__(model_name, api_key, **kwargs)

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        if self.query_template is not None:
            fields["query_template"] = self.query_template
        if self.document_template is not None:
            fields["document_template"] = self.document_template
        return fields

    def _route(self) -> str:
        return self.route

    def _milvus_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """Milvus's ``vllm`` provider at this server's root; for Milvus Lite, its ``/v2`` API.

        vLLM's ``/v2/rerank`` speaks Cohere v2, which is what Milvus Lite's one provider calls.
        A keyed server needs ``credential`` for ``"milvus"``: raw keys never go to a server.
        Templates are refused: Milvus sends the raw query and documents, so they would be lost.
        """
        if self.query_template is not None or self.document_template is not None:
            raise ConfigurationError(
                "this VLLMReranker writes each query and document through query_template/"
                "document_template, but Milvus's server-side rerank sends the raw text to the "
                "server, so the model would score unformatted pairs. Serve the model with "
                "`milvus-rerank serve --reranker qwen3 --model <dir>` (it writes the "
                "Qwen3-Reranker prompt itself) and point a VLLMReranker without templates at "
                "it, or rerank client-side with milvus_rerank.milvus.rerank_hits."
            )
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
        if self.query_template is not None:
            query = self.query_template.format(query=query)
        if self.document_template is not None:
            documents = [self.document_template.format(document=d) for d in documents]
        payload: dict[str, Any] = {"query": query, "documents": documents}
        if self.model_name is not None:
            payload = {"model": self.model_name, **payload}
        if self.truncate_prompt_tokens is not None:
            payload["truncate_prompt_tokens"] = self.truncate_prompt_tokens
        return payload

    def _usage(self, body: Any) -> Usage:
        """``usage.total_tokens`` (null where the server counted none)."""
        return Usage(tokens=self._usage_count(body, "usage", "total_tokens"))


def _check_template(option: str, template: object, field: str) -> str | None:
    """``template`` if it is None or a format string whose only field is ``{field}``."""
    if template is None:
        return None
    placeholder = "{" + field + "}"
    if not isinstance(template, str):
        raise ConfigurationError(
            f"VLLMReranker: {option} must be a str with {placeholder}, got {template!r}"
        )
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(
            f"VLLMReranker: {option} {template!r} is not a format string ({exc}); "
            "double a literal brace: '{{' or '}}'"
        ) from None
    fields = [
        "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        for _, name, spec, conversion in parts
        if name is not None
    ]
    bad = [f for f in fields if f != placeholder]
    if bad or not fields:
        found = f" (it has {bad[0]})" if bad else ""
        raise ConfigurationError(
            f"VLLMReranker: {option} must hold {placeholder} and no other field{found}, got "
            f"{template!r}; double a literal brace: '{{{{' or '}}}}'"
        )
    return template
