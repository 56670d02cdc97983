"""Hugging Face Text Embeddings Inference's rerank route (``POST /rerank``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from milvus_rerank.core.base import MilvusTarget, describe_value
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.api.contract import HTTPReranker
from milvus_rerank.providers.api.options import server_root
from milvus_rerank.providers.api.secrets import Secret

__all__ = ["TEIReranker"]


class TEIReranker(HTTPReranker):
    """A reranker served by ``text-embeddings-inference`` (the model is fixed at launch).

    ``base_url`` is required. TEI refuses more than ``--max-client-batch-size`` texts per
    request (32 by default) with a 422, so longer lists go out in chunks of
    ``max_client_batch_size``. ``Usage.tokens`` is what TEI reports in its
    ``x-compute-tokens`` answer header (its body carries no usage).

    Args:
        raw_scores: Ask for raw logits instead of TEI's sigmoid scores.
        truncate: Let TEI truncate pairs past the model's max length (else it errors).
        truncation_direction: ``"Right"`` or ``"Left"``.
        max_client_batch_size: Texts per request; match the server's flag.
        **kwargs: ``api_key``, ``base_url``, ``timeout``, ``retry``, ``max_response_bytes``,
            ``max_concurrency``, ``http_client``, ``http_async_client``, ``headers``.
    """

    provider: ClassVar[str] = "tei"
    path: ClassVar[str] = "/rerank"
    results_key: ClassVar[str | None] = None
    score_key: ClassVar[str] = "score"
    default_max_batch: ClassVar[int | None] = 32
    usage_header: ClassVar[str | None] = "x-compute-tokens"

    def __init__(
        self,
        model_name: str | None = None,
        api_key: str | Secret | None = None,
        *,
        raw_scores: bool = False,
        truncate: bool = False,
        truncation_direction: Literal["Right", "Left"] = "Right",
        max_client_batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        if truncation_direction not in ("Right", "Left"):
            raise ConfigurationError(
                f"TEIReranker: truncation_direction must be 'Right' or 'Left', "
                f"got {truncation_direction!r}"
            )
        for option, value in (("raw_scores", raw_scores), ("truncate", truncate)):
            if not isinstance(value, bool):  # "false" would be sent, and is truthy
                raise ConfigurationError(
                    f"TEIReranker: {option} must be a bool, got {describe_value(value)}"
                )
        kwargs.setdefault("max_batch", max_client_batch_size)
        super().__init__(model_name, api_key, **kwargs)
        self.raw_scores = raw_scores
        self.truncate = truncate
        self.truncation_direction = truncation_direction

    def _milvus_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """Milvus's ``tei`` provider at this server's root; Milvus Lite cannot call TEI.

        A keyed server needs ``credential``: raw keys never go to a Milvus server.
        """
        if target == "milvus-lite":
            return super()._milvus_params(target, credential=credential)
        params: dict[str, Any] = {
            "provider": "tei",
            "endpoint": server_root(self.base_url),
            "truncate": self.truncate,
            "truncation_direction": self.truncation_direction,
        }
        if self.max_batch is not None:
            params["max_client_batch_size"] = self.max_batch
        return self._with_milvus_credential(params, credential, server_knows_key=False)

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        return {
            "query": query,
            "texts": documents,
            "raw_scores": self.raw_scores,
            "return_text": False,
            "truncate": self.truncate,
            "truncation_direction": self.truncation_direction,
        }
