"""NVIDIA's reranking NIM: the hosted API catalog, or a self-hosted NIM's ``/v1/ranking``."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.results import Usage
from milvus_rerank.providers.api.contract import HTTPReranker
from milvus_rerank.providers.api.options import server_root
from milvus_rerank.providers.api.secrets import Secret

__all__ = ["NVIDIAReranker"]

#: What a hosted model name may hold: it becomes part of the URL's path.
_PATH_SAFE = re.compile(r"[A-Za-z0-9._:-]+(?:/[A-Za-z0-9._:-]+)*")

#: Hosted models whose API-catalog route is not ``/v1/retrieval/<model>/reranking``.
_HOSTED_ROUTES = {
    "nvidia/nv-rerankqa-mistral-4b-v3": "/v1/retrieval/nvidia/reranking",
    "nv-rerank-qa-mistral-4b:1": "/v1/retrieval/nvidia/reranking",
}


class NVIDIAReranker(HTTPReranker):
    """NVIDIA NeMo Retriever rerankers (``nvidia/llama-3.2-nv-rerankqa-1b-v2``...).

    With no ``base_url`` it calls NVIDIA's hosted API catalog
    (``https://ai.api.nvidia.com/v1/retrieval/<model>/reranking``, the model's dots written as
    underscores) and needs a key: ``api_key``, else ``NVIDIA_API_KEY``. With ``base_url`` it
    calls a self-hosted NIM's ``/v1/ranking`` and the key is optional (``api_key`` only:
    ``NVIDIA_API_KEY`` goes to NVIDIA's API alone).

    Scores are the model's raw logits (``rankings[].logit``), any real number, not
    probabilities: rank by them, and apply a sigmoid yourself if you need 0 to 1.

    Args:
        model_name: NIM model name.
        truncate: ``"END"`` cuts query/passage pairs past the model's context from the right;
            ``"NONE"`` makes the NIM refuse them (its own default).
        **kwargs: ``api_key``, ``base_url``, ``timeout``, ``retry``,
            ``max_batch`` (default 512 passages per request), ``max_concurrency``,
            ``http_client``, ``http_async_client``, ``headers``; see ``HTTPReranker``.
    """

    provider: ClassVar[str] = "nvidia"
    path: ClassVar[str] = "/v1/ranking"
    default_base_url: ClassVar[str | None] = "https://ai.api.nvidia.com"
    env_vars: ClassVar[tuple[str, ...]] = ("NVIDIA_API_KEY",)
    default_model: ClassVar[str | None] = "nvidia/llama-3.2-nv-rerankqa-1b-v2"
    default_max_batch: ClassVar[int | None] = 512
    results_key: ClassVar[str | None] = "rankings"
    score_key: ClassVar[str] = "logit"

    def __init__(
        self,
        model_name: str | None = None,
        api_key: str | Secret | None = None,
        *,
        truncate: Literal["END", "NONE"] = "END",
        **kwargs: Any,
    ) -> None:
        if truncate not in ("END", "NONE"):
            raise ConfigurationError(
                f"NVIDIAReranker: truncate must be 'END' or 'NONE', got {truncate!r}"
            )
        self.truncate = truncate
        super().__init__(model_name, api_key, **kwargs)

    def _hosted(self) -> bool:
        assert self.default_base_url is not None  # noqa: S101 - set on the class
        return server_root(self.base_url) == self.default_base_url

    def _route(self) -> str:
        if not self._hosted():
            return self.path
        model = str(self.model_name)
        if model not in _HOSTED_ROUTES and not _PATH_SAFE.fullmatch(model):
            # It goes in the URL's path: '?', '#' or '%' would turn into a query or fragment
            # (echoed in every "could not be reached at <url>" message) or another route.
            raise ConfigurationError(
                f"NVIDIAReranker: model_name {model!r} cannot name a hosted model: it goes in "
                "the URL path, so only letters, digits and . _ - / : are allowed"
            )
        return _HOSTED_ROUTES.get(model, f"/v1/retrieval/{model.replace('.', '_')}/reranking")

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "query": {"text": query},
            "passages": [{"text": doc} for doc in documents],
            "truncate": self.truncate,
        }

    def _usage(self, body: Any) -> Usage:
        """``usage.total_tokens``, which recent NIMs answer (older ones answer no usage)."""
        return Usage(tokens=self._usage_count(body, "usage", "total_tokens"))
