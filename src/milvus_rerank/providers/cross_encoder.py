"""sentence-transformers-style cross-encoders (``cross-encoder/ms-marco-MiniLM-L-6-v2`` family)."""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigurationError
from ._local import LocalModelRunner, LocalReranker, sigmoid

__all__ = ["CrossEncoderReranker"]

logger = logging.getLogger(__name__)

_IDENTITY = {"torch.nn.modules.linear.Identity", "torch.nn.Identity"}
_SIGMOID = {"torch.nn.modules.activation.Sigmoid", "torch.nn.Sigmoid"}


class CrossEncoderReranker(LocalReranker):
    """A cross-encoder scored exactly like ``sentence_transformers.CrossEncoder.predict``.

    Pairs are truncated ``longest_first`` to the tokenizer's ``model_max_length`` (capped at
    the model's position table), and the activation is the one sentence-transformers picks
    for the checkpoint: the ``activation_fn`` its config names (``Identity`` for the
    ms-marco MiniLM family, so raw logits), else the sigmoid for a one-label model.

    Args:
        model_name: Hugging Face hub name or local directory.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None picks CUDA when present.
        batch_size: Upper bound of pairs per forward pass.
        max_length: Token limit of a pair; None reads it from the tokenizer like the reference.
        use_fp16: Run in half precision on CUDA (ignored on the CPU).
        max_tokens_per_batch: Upper bound of padded tokens per forward pass (None: 1,024 on
            CPUs, where small length-sorted batches run fastest, and no bound on GPUs).
        activation: ``"identity"`` or ``"sigmoid"`` to override what the config says.
        trust_remote_code: Allow custom modelling code and custom activations from the hub.
        revision: Hub revision (branch, tag or commit).
        cache_dir: Hugging Face cache directory.
        local_files_only: Never contact the hub.
    """

    provider: ClassVar[str] = "cross-encoder"
    default_model: ClassVar[str] = "cross-encoder/ms-marco-MiniLM-L-6-v2"

    def __init__(
        self,
        model_name: str = default_model,
        *,
        device: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        use_fp16: bool = True,
        max_tokens_per_batch: int | None = None,
        activation: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
    ) -> None:
        super().__init__(
            LocalModelRunner(
                model_name,
                truncation="longest_first",
                device=device,
                use_fp16=use_fp16,
                batch_size=batch_size,
                max_length=max_length,
                max_tokens_per_batch=max_tokens_per_batch,
                trust_remote_code=trust_remote_code,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        )
        if activation not in (None, "identity", "sigmoid"):
            raise ConfigurationError(
                f"activation must be 'identity', 'sigmoid' or None, got {activation!r}"
            )
        self._requested_activation = activation
        self._activation: Callable[[list[float]], list[float]] | None = None

    @classmethod
    def build_tiny_checkpoint(cls, path: Path) -> Path:
        """A tiny random checkpoint of this architecture (see ``LocalReranker``)."""
        from ..tiny import build_tiny_cross_encoder

        return build_tiny_cross_encoder(path, initializer_range=0.2)

    def _activate(self, logits: list[float]) -> list[float]:
        if self._activation is None:
            self._activation = self._resolve_activation()
        return self._activation(logits)

    def _resolve_activation(self) -> Callable[[list[float]], list[float]]:
        if self._requested_activation == "identity":
            return _identity
        if self._requested_activation == "sigmoid":
            return _sigmoid_all
        path = self._configured_activation()
        if path is None or path in _SIGMOID:
            return _sigmoid_all
        if path in _IDENTITY:
            return _identity
        if not (path.startswith("torch.") or self.runner.trust_remote_code):
            logger.warning(
                "Activation %r of %s is not trusted; using the sigmoid like sentence-transformers. "
                "Pass trust_remote_code=True to allow it.",
                path,
                self.model_name,
            )
            return _sigmoid_all
        return _torch_activation(path)

    def _configured_activation(self) -> str | None:
        """The activation path, looked up where sentence-transformers looks, in its order."""
        config = self.runner.load().model.config
        st_file = self._st_config_file()
        if st_file is not None:
            value = json.loads(st_file.read_text(encoding="utf-8")).get("activation_fn")
            if isinstance(value, str):
                return value
        st_block = getattr(config, "sentence_transformers", None)
        if isinstance(st_block, dict) and isinstance(st_block.get("activation_fn"), str):
            return str(st_block["activation_fn"])
        legacy = getattr(config, "sbert_ce_default_activation_function", None)
        return legacy if isinstance(legacy, str) else None

    def _st_config_file(self) -> Path | None:
        name = "config_sentence_transformers.json"
        path = Path(self.runner.model_name).expanduser()
        if path.is_dir():
            candidate = path / name
            return candidate if candidate.is_file() else None
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - transformers always brings it
            return None
        found = try_to_load_from_cache(
            self.runner.model_name,
            name,
            cache_dir=self.runner.cache_dir,
            revision=self.runner.revision,
        )
        return Path(found) if isinstance(found, str) else None


def _identity(logits: list[float]) -> list[float]:
    return logits


def _sigmoid_all(logits: list[float]) -> list[float]:
    return [sigmoid(x) for x in logits]


def _torch_activation(path: str) -> Callable[[list[float]], list[float]]:
    import torch

    module_name, _, attr = path.rpartition(".")
    fn: Any = getattr(importlib.import_module(module_name), attr)()

    def apply(logits: list[float]) -> list[float]:
        with torch.inference_mode():
            out: list[float] = fn(torch.tensor(logits, dtype=torch.float32)).tolist()
        return out

    return apply
