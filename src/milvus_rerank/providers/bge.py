"""BAAI BGE rerankers (``BAAI/bge-reranker-v2-m3`` family), scored like FlagEmbedding."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ._local import LocalModelRunner, LocalReranker, sigmoid

__all__ = ["BGEReranker"]


class BGEReranker(LocalReranker):
    """A BGE reranker scored exactly like ``FlagEmbedding.FlagReranker.compute_score``.

    The query is cut to ``query_max_length`` tokens (3/4 of ``max_length`` by default), the
    pair to ``max_length`` by shortening the passage only, as FlagEmbedding does. Scores are
    raw logits, or their sigmoid in [0, 1] when ``normalize=True`` (the default here, since a
    probability-like score is what RAG thresholds expect).

    Args:
        model_name: Hugging Face hub name or local directory.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None picks CUDA when present.
        use_fp16: Run in half precision on CUDA (ignored on the CPU, as in FlagEmbedding).
        normalize: Apply the sigmoid to the logits.
        max_length: Token limit of a pair (FlagEmbedding's default, 512).
        query_max_length: Token limit of the query alone (default ``max_length * 3 // 4``).
        batch_size: Upper bound of pairs per forward pass.
        max_tokens_per_batch: Upper bound of padded tokens per forward pass (None: 1,024 on
            CPUs, where small length-sorted batches run fastest, and no bound on GPUs).
        trust_remote_code: Allow custom modelling code from the hub.
        revision: Hub revision (branch, tag or commit).
        cache_dir: Hugging Face cache directory.
        local_files_only: Never contact the hub.
    """

    provider: ClassVar[str] = "bge"
    default_model: ClassVar[str] = "BAAI/bge-reranker-v2-m3"

    def __init__(
        self,
        model_name: str = default_model,
        *,
        device: str | None = None,
        use_fp16: bool = True,
        normalize: bool = True,
        max_length: int = 512,
        query_max_length: int | None = None,
        batch_size: int = 32,
        max_tokens_per_batch: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
    ) -> None:
        super().__init__(
            LocalModelRunner(
                model_name,
                truncation="only_second",
                device=device,
                use_fp16=use_fp16,
                batch_size=batch_size,
                max_length=max_length,
                query_max_length=query_max_length,
                max_tokens_per_batch=max_tokens_per_batch,
                trust_remote_code=trust_remote_code,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        )
        self.normalize = normalize

    def _activate(self, logits: list[float]) -> list[float]:
        if not self.normalize:
            return logits
        return [sigmoid(x) for x in logits]

    @classmethod
    def build_tiny_checkpoint(cls, path: Path) -> Path:
        """A tiny random checkpoint of this architecture (see ``LocalReranker``)."""
        from ..tiny import build_tiny_bge

        return build_tiny_bge(path, initializer_range=0.2)

    def _repr_fields(self) -> dict[str, Any]:
        return {**super()._repr_fields(), "normalize": self.normalize}
