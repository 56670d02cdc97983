"""sentence-transformers-style cross-encoders (``cross-encoder/ms-marco-MiniLM-L-6-v2`` family)."""

from __future__ import annotations

import importlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from typing_extensions import Unpack

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local.clipping import ClippedText, longer_cuts
from milvus_rerank.providers.local.family import (
    Located,
    ModelSource,
    Rows,
    SequenceClassifierFamily,
    controls_as_unk,
    identity,
    sigmoid_all,
)
from milvus_rerank.providers.local.options import LocalOptions
from milvus_rerank.providers.local.reranker import LocalReranker

__all__ = ["MATH_ACTIVATIONS", "CrossEncoderFamily", "CrossEncoderReranker"]

logger = logging.getLogger("milvus_rerank.providers.cross_encoder")  # the name users configure

_IDENTITY = {"torch.nn.modules.linear.Identity", "torch.nn.Identity"}
_SIGMOID = {"torch.nn.modules.activation.Sigmoid", "torch.nn.Sigmoid"}


class CrossEncoderFamily(SequenceClassifierFamily):
    """sentence-transformers' ``CrossEncoder``: ``longest_first`` truncation, its activation.

    ``max_length`` defaults to the tokenizer's ``model_max_length`` capped at the position
    table; the activation is the ``activation_fn`` the checkpoint's config names
    (``Identity`` for the ms-marco MiniLM family, so raw logits), else the sigmoid for a
    one-label model, unless ``activation`` overrides it.
    """

    def __init__(self, *, activation: str | None = None) -> None:
        if activation not in (None, "identity", "sigmoid"):
            raise ConfigurationError(
                f"activation must be 'identity', 'sigmoid' or None, got {activation!r}"
            )
        self.requested_activation = activation

    def default_max_length(self, tokenizer: Any, config: Any) -> int:
        """The tokenizer's ``model_max_length`` capped at the position table (the reference's)."""
        limit = int(getattr(tokenizer, "model_max_length", 512) or 512)
        positions = getattr(config, "max_position_embeddings", -1)
        if positions is not None and positions != -1:
            limit = min(limit, int(positions))
        return limit

    def query_tokens_read(self, max_length: int) -> int | None:
        """``longest_first`` keeps the query's head, fewer than ``max_length`` tokens."""
        return max_length

    def encode(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> Rows:
        """``tokenizer(queries, documents, truncation="longest_first")``, unpadded."""
        return self._encode(tokenizer, queries, documents, max_length)[0]

    def locate(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> list[Located]:
        """``encode``'s rows; a row at ``max_length`` gets its document tokenized whole.

        Only such a row can have lost document tokens, so only its document is tokenized
        again, alone (a pair's two texts are tokenized apart, so the ids are the same). The
        windows keep the query as ``longest_first`` cut it for the whole document.
        """
        rows, sequences, documents = self._encode(tokenizer, queries, documents, max_length)
        full = [i for i, row in enumerate(rows) if len(row["input_ids"]) >= max_length]
        located = [Located(row) for row in rows]
        if not full:
            return located
        alone = self.tokenize_whole(tokenizer, [documents[i] for i in full])["input_ids"]
        controls = self.user_controls(tokenizer)
        for i, ids in zip(full, alone, strict=True):
            ids = ids if controls is None else controls_as_unk(ids, controls)
            kept = [j for j, seq in enumerate(sequences[i]) if seq == 1]
            if kept and len(kept) < len(ids):
                located[i] = Located(rows[i], ids, kept[0], kept[-1] + 1)
        return located

    def _encode(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> tuple[Rows, list[list[int | None]], list[str]]:
        """Rows, each row's sequence ids, and the documents as tokenized (cuts grown, below).

        ``longest_first`` gives the longer text the odd token when both must be cut, so a
        cut text (``ClippedText``) must compare with its partner as the whole text does: where
        that decides a row, the pair is tokenized again from cuts that do (``longer_cuts``).
        """
        queries, documents = list(queries), list(documents)
        rows, sequences = self._encode_pairs(tokenizer, queries, documents, max_length)
        room = max_length - int(tokenizer.num_special_tokens_to_add(pair=True))
        halves = {room // 2, room - room // 2}
        again = []
        for i, seqs in enumerate(sequences):
            if room % 2 and (
                isinstance(queries[i], ClippedText) or isinstance(documents[i], ClippedText)
            ):
                kept = (seqs.count(0), seqs.count(1))
                if set(kept) <= halves and sum(kept) == room:  # both cut to halves
                    cuts = longer_cuts(
                        tokenizer, queries[i], documents[i], self.split_special_tokens
                    )
                    if cuts != (queries[i], documents[i]):
                        queries[i], documents[i] = cuts
                        again.append(i)
        if again:
            fixed = self._encode_pairs(
                tokenizer, [queries[i] for i in again], [documents[i] for i in again], max_length
            )
            for i, row, seqs in zip(again, *fixed, strict=True):
                rows[i], sequences[i] = row, seqs
        return rows, sequences, documents

    def _encode_pairs(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> tuple[Rows, list[list[int | None]]]:
        want_types = "token_type_ids" in tokenizer.model_input_names
        encoded = tokenizer(
            list(queries),
            list(documents),
            truncation="longest_first",
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=want_types,
            split_special_tokens=self.split_special_tokens,
        )
        names = ["input_ids", "token_type_ids"] if want_types else ["input_ids"]
        columns = [encoded[name] for name in names]
        rows = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
        sequences = [list(encoded.sequence_ids(i)) for i in range(len(rows))]
        controls = self.user_controls(tokenizer)
        if controls is not None:  # what a vocabulary holding the specials matched anyway
            for row, seqs in zip(rows, sequences, strict=True):
                row["input_ids"] = controls_as_unk(row["input_ids"], controls, seqs)
        return rows, sequences

    def activation(self, model: Any, source: ModelSource) -> Callable[[list[float]], list[float]]:
        """The activation sentence-transformers would apply to this checkpoint."""
        if self.requested_activation == "identity":
            return identity
        if self.requested_activation == "sigmoid":
            return sigmoid_all
        path = _configured_activation(model.config, source)
        if path is None or path in _SIGMOID:
            return sigmoid_all
        if path in _IDENTITY:
            return identity
        if not (path.startswith("torch.") or source.trust_remote_code):
            logger.warning(
                "Activation %r of %s is not trusted; using the sigmoid like sentence-transformers. "
                "Pass trust_remote_code=True to allow it.",
                path,
                source.model_name,
            )
            return sigmoid_all
        if self.backend == "onnx" and path in MATH_ACTIVATIONS:  # no torch on that path
            return MATH_ACTIVATIONS[path]
        return _torch_activation(path)

    def describe(self) -> dict[str, Any]:
        """Family options for the repr."""
        return {"activation": self.requested_activation} if self.requested_activation else {}


def _configured_activation(config: Any, source: ModelSource) -> str | None:
    """The activation path, looked up where sentence-transformers looks, in its order."""
    st_file = _st_config_file(source)
    if st_file is not None:
        value = json.loads(st_file.read_text(encoding="utf-8")).get("activation_fn")
        if isinstance(value, str):
            return value
    st_block = getattr(config, "sentence_transformers", None)
    if isinstance(st_block, dict) and isinstance(st_block.get("activation_fn"), str):
        return str(st_block["activation_fn"])
    legacy = getattr(config, "sbert_ce_default_activation_function", None)
    return legacy if isinstance(legacy, str) else None


def _st_config_file(source: ModelSource) -> Path | None:
    name = "config_sentence_transformers.json"
    if source.path is not None:
        candidate = source.path / name
        return candidate if candidate.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings it
        return None
    found = try_to_load_from_cache(
        source.model_name, name, cache_dir=source.cache_dir, revision=source.revision
    )
    return Path(found) if isinstance(found, str) else None


class CrossEncoderReranker(LocalReranker):
    """A cross-encoder scored exactly like ``sentence_transformers.CrossEncoder.predict``.

    Pairs are truncated ``longest_first`` to ``max_length`` (default: the tokenizer's
    ``model_max_length``, capped at the position table), and the activation is the one
    sentence-transformers picks for the checkpoint (see ``CrossEncoderFamily``).

    Args:
        model_name: Hugging Face hub name or local directory.
        activation: ``"identity"`` or ``"sigmoid"`` to override what the config says.
        **options: The options of every local reranker (``LocalOptions``): device, dtype,
            use_fp16, batch_size, max_length, max_tokens_per_batch, trust_remote_code (also
            allows custom activations), revision, cache_dir, local_files_only, long_documents
            ("max_passage": a long document scores as its best window), passage_overlap,
            max_passages.
    """

    provider: ClassVar[str] = "cross-encoder"
    default_model: ClassVar[str] = "cross-encoder/ms-marco-MiniLM-L-6-v2"
    tiny_builder: ClassVar[str | None] = "build_tiny_cross_encoder"
    family: CrossEncoderFamily

    def __init__(
        self,
        model_name: str = default_model,
        *,
        activation: str | None = None,
        **options: Unpack[LocalOptions],
    ) -> None:
        super().__init__(model_name, CrossEncoderFamily(activation=activation), **options)


def _elementwise(fn: Callable[[float], float]) -> Callable[[list[float]], list[float]]:
    def apply(logits: list[float]) -> list[float]:
        return [fn(x) for x in logits]

    return apply


#: torch activations a checkpoint may name, in plain Python (the ONNX backend runs without
#: torch); another one runs through torch where it is installed.
MATH_ACTIVATIONS: dict[str, Callable[[list[float]], list[float]]] = {
    name: _elementwise(fn)
    for names, fn in (
        (("torch.nn.modules.activation.Tanh", "torch.nn.Tanh"), math.tanh),
        (("torch.nn.modules.activation.ReLU", "torch.nn.ReLU"), lambda x: max(x, 0.0)),
        (("torch.nn.modules.activation.Softsign", "torch.nn.Softsign"), lambda x: x / (1 + abs(x))),
    )
    for name in names
}


def _torch_activation(path: str) -> Callable[[list[float]], list[float]]:
    try:
        import torch
    except ImportError:
        raise ConfigurationError(
            f"the checkpoint's activation {path!r} runs in torch, which is not installed: "
            "install milvus-rerank[local], or pass activation='sigmoid' or 'identity'"
        ) from None

    module_name, _, attr = path.rpartition(".")
    fn: Any = getattr(importlib.import_module(module_name), attr)()

    def apply(logits: list[float]) -> list[float]:
        with torch.inference_mode():
            out: list[float] = fn(torch.tensor(logits, dtype=torch.float32)).tolist()
        return out

    return apply
