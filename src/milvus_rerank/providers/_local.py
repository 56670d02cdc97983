"""One local-model runner: load once, tokenize pairs, batch by length, forward in inference mode.

The BGE and cross-encoder rerankers differ only in how pairs are truncated (to match their
reference libraries) and in the score activation; everything else lives here.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from typing_extensions import Self

from ..base import Reranker
from ..errors import ConfigurationError, MissingDependencyError
from ._cls_forward import cls_only_forward

__all__ = [
    "LocalModelRunner",
    "LocalReranker",
    "Truncation",
    "plan_batches",
    "resolve_device",
    "sigmoid",
]

Truncation = Literal["longest_first", "only_second"]

_TRUTHY = {"1", "true", "yes", "on"}
#: Default padded tokens per forward pass on CPUs (see ``LocalModelRunner.token_budget``).
CPU_TOKEN_BUDGET = 1024


def _import_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError("Local rerankers", "local", exc.name or "torch") from exc
    return torch


def resolve_device(device: str | None) -> str:
    """The torch device to use: the one asked for, else CUDA when present, else the CPU."""
    torch = _import_torch()
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError(f"device {device!r} is not a torch device: {exc}") from None


def sigmoid(x: float) -> float:
    """The logistic function, without overflow for large negative logits."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def plan_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None) -> list[slice]:
    """Cut length-sorted (longest first) sequences into batches.

    A batch holds at most ``batch_size`` sequences and, when ``max_tokens`` is set, at most
    ``max_tokens`` padded tokens (its first, longest sequence times its size; never fewer
    than one sequence). On CPUs small batches of similar length beat large padded ones.
    """
    batches: list[slice] = []
    start = 0
    while start < len(lengths):
        size = batch_size
        if max_tokens is not None:
            size = max(1, min(batch_size, max_tokens // max(1, lengths[start])))
        batches.append(slice(start, start + size))
        start += size
    return batches


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached, or None when a TCP connection opens."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUTHY or (
        os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in _TRUTHY
    ):
        return "offline mode is set (HF_HUB_OFFLINE)"
    parts = urlsplit(_hub_endpoint())
    host = parts.hostname or "huggingface.co"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port} is unreachable ({exc.strerror or exc})"


@dataclass(frozen=True)
class _Loaded:
    model: Any
    tokenizer: Any
    device: str
    max_length: int
    input_names: tuple[str, ...]
    pad_id: int
    pad_left: bool
    #: The [CLS]-only forward (``_cls_forward``), or None to run the model's own.
    fast_forward: Callable[..., Any] | None = None


class LocalModelRunner:
    """Scores (query, document) pairs with a Hugging Face sequence-classification model.

    The model loads once, lazily and thread-safely, on first use. Pairs are tokenized once,
    sorted by length and cut into batches bounded by ``batch_size`` and
    ``max_tokens_per_batch``, so little compute goes to padding. Forward passes run under
    ``torch.inference_mode()``, in fp16 on CUDA when asked; for stock BERT and XLM-R classifiers
    the last layer runs for ``[CLS]`` only (``_cls_forward``), the one position they read.
    """

    def __init__(
        self,
        model_name: str,
        *,
        truncation: Truncation,
        device: str | None = None,
        use_fp16: bool = True,
        batch_size: int = 32,
        max_length: int | None = None,
        query_max_length: int | None = None,
        max_tokens_per_batch: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
    ) -> None:
        if not isinstance(model_name, (str, os.PathLike)) or not str(model_name).strip():
            raise ConfigurationError(f"model_name must be a hub name or a path, got {model_name!r}")
        for name, value in (
            ("batch_size", batch_size),
            ("max_length", max_length),
            ("query_max_length", query_max_length),
            ("max_tokens_per_batch", max_tokens_per_batch),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
        self.model_name = str(model_name)
        self.truncation: Truncation = truncation
        self.requested_device = device
        self.use_fp16 = use_fp16
        self.batch_size = batch_size
        self.requested_max_length = max_length
        self.query_max_length = query_max_length
        self.max_tokens_per_batch = max_tokens_per_batch
        self.trust_remote_code = trust_remote_code
        self.revision = revision
        self.cache_dir = cache_dir
        self.local_files_only = local_files_only
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()
        # Fast tokenizers keep truncation state on the shared Rust object: one caller at a time.
        self._tokenizer_lock = threading.Lock()

    # -- loading -------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the model is already in memory."""
        return self._loaded is not None

    def load(self) -> _Loaded:
        """Load the tokenizer and model once; later calls return the same objects."""
        loaded = self._loaded
        if loaded is None:
            with self._load_lock:
                if self._loaded is None:
                    self._loaded = self._load()
                loaded = self._loaded
        return loaded

    def _from_pretrained(self, factory: Any, source: str, local_only: bool) -> Any:
        return factory.from_pretrained(
            source,
            trust_remote_code=self.trust_remote_code,
            revision=self.revision,
            cache_dir=self.cache_dir,
            local_files_only=local_only,
        )

    def _load_pair(self, source: str, local_only: bool) -> tuple[Any, Any]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = self._from_pretrained(AutoTokenizer, source, local_only)
        model = self._from_pretrained(AutoModelForSequenceClassification, source, local_only)
        return tokenizer, model

    def _load(self) -> _Loaded:
        torch = _import_torch()
        device = resolve_device(self.requested_device)
        path = Path(self.model_name).expanduser()
        if path.is_dir():
            try:
                tokenizer, model = self._load_pair(str(path), True)
            except (OSError, ValueError) as exc:
                raise ConfigurationError(
                    f"Cannot load a reranker model from the directory {str(path)!r}: {exc}"
                ) from exc
        else:
            tokenizer, model = self._load_from_hub()
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigurationError(
                f"model {self.model_name!r} has no fast (Rust) tokenizer; one is required"
            )
        num_labels = int(getattr(model.config, "num_labels", 1))
        if num_labels != 1:
            raise ConfigurationError(
                f"model {self.model_name!r} has {num_labels} output labels; a reranker needs a "
                "model with one relevance logit (num_labels=1)"
            )
        model.eval()
        if self.use_fp16 and device.startswith("cuda"):
            model.half()
        model.to(device)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            raise ConfigurationError(f"the tokenizer of {self.model_name!r} has no pad token")
        input_names = tuple(
            name
            for name in ("input_ids", "token_type_ids", "attention_mask")
            if name != "token_type_ids" or name in tokenizer.model_input_names
        )
        del torch  # imported above only to fail early and clearly without the extra
        pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        return _Loaded(
            model=model,
            tokenizer=tokenizer,
            device=device,
            max_length=self._resolve_max_length(tokenizer, model.config),
            input_names=input_names,
            pad_id=int(pad_id),
            pad_left=pad_left,
            # [CLS] must sit at position 0 of every row: right padding only.
            fast_forward=None if pad_left else cls_only_forward(model),
        )

    def _load_from_hub(self) -> tuple[Any, Any]:
        try:
            return self._load_pair(self.model_name, True)
        except (OSError, ValueError):
            pass  # not in the local cache: try the hub below, if allowed and reachable
        hint = (
            f"Download it where the hub is reachable (for example `hf download "
            f"{self.model_name} --local-dir ./models/{self.model_name.rsplit('/', 1)[-1]}`) "
            "and pass that directory as model_name."
        )
        reason = "local_files_only=True" if self.local_files_only else _hub_unreachable_reason()
        if reason is not None:
            raise ConfigurationError(
                f"Cannot load reranker model {self.model_name!r}: it is not a local directory, "
                f"not in the Hugging Face cache, and the hub at {_hub_endpoint()} cannot be used "
                f"({reason}). {hint}"
            )
        try:
            return self._load_pair(self.model_name, False)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"Cannot load reranker model {self.model_name!r} from {_hub_endpoint()}: {exc}. "
                f"{hint}"
            ) from exc

    def _resolve_max_length(self, tokenizer: Any, config: Any) -> int:
        if self.requested_max_length is not None:
            return self.requested_max_length
        if self.truncation == "only_second":
            return 512  # FlagEmbedding's FlagReranker default
        # sentence-transformers: the tokenizer's model_max_length, capped at the position table.
        limit = int(getattr(tokenizer, "model_max_length", 512) or 512)
        positions = getattr(config, "max_position_embeddings", -1)
        if positions is not None and positions != -1:
            limit = min(limit, int(positions))
        return limit

    # -- tokenization --------------------------------------------------------------------

    def encode_pairs(self, query: str, documents: Sequence[str]) -> list[dict[str, list[int]]]:
        """Tokenize (query, document) pairs without padding, truncated like the reference."""
        return self.encode_many([query] * len(documents), documents)

    def encode_many(
        self, queries: Sequence[str], documents: Sequence[str]
    ) -> list[dict[str, list[int]]]:
        """Tokenize pairs whose queries may differ (``queries[i]`` goes with ``documents[i]``)."""
        loaded = self.load()
        with self._tokenizer_lock:
            if self.truncation == "longest_first":
                return self._encode_longest_first(loaded, queries, documents)
            rows: list[dict[str, list[int]]] = [{} for _ in documents]
            groups: dict[str, list[int]] = {}
            for i, query in enumerate(queries):
                groups.setdefault(query, []).append(i)
            for query, positions in groups.items():
                encoded = self._encode_only_second(loaded, query, [documents[i] for i in positions])
                for i, row in zip(positions, encoded, strict=True):
                    rows[i] = row
            return rows

    def _encode_longest_first(
        self, loaded: _Loaded, queries: Sequence[str], documents: Sequence[str]
    ) -> list[dict[str, list[int]]]:
        # sentence-transformers' CrossEncoder: tokenizer(pairs, truncation="longest_first").
        encoded = loaded.tokenizer(
            list(queries),
            list(documents),
            truncation="longest_first",
            max_length=loaded.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids="token_type_ids" in loaded.input_names,
        )
        names = [name for name in loaded.input_names if name != "attention_mask"]
        columns = [encoded[name] for name in names]
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]

    def _encode_only_second(
        self, loaded: _Loaded, query: str, documents: Sequence[str]
    ) -> list[dict[str, list[int]]]:
        # FlagEmbedding's FlagReranker: the query alone is cut to query_max_length (3/4 of
        # max_length by default), each passage to max_length, then the pair with special
        # tokens is cut to max_length by shortening the passage only.
        backend = loaded.tokenizer.backend_tokenizer
        backend.no_truncation()
        backend.no_padding()
        max_length = loaded.max_length
        query_max = self.query_max_length or max_length * 3 // 4
        q = backend.encode(query, add_special_tokens=False)
        q.truncate(query_max)
        specials = backend.num_special_tokens_to_add(True)
        docs = backend.encode_batch(list(documents), add_special_tokens=False)
        want_types = "token_type_ids" in loaded.input_names
        rows: list[dict[str, list[int]]] = []
        for d in docs:
            d.truncate(max_length)
            excess = len(q.ids) + len(d.ids) + specials - max_length
            if 0 < excess < len(d.ids):
                d.truncate(len(d.ids) - excess)
            # An empty passage tokenizes like the query alone, as the reference does on
            # transformers 5 (its tokenizer call drops an empty second text).
            pair = backend.post_process(q, d if d.ids else None, add_special_tokens=True)
            row = {"input_ids": pair.ids}
            if want_types:
                row["token_type_ids"] = pair.type_ids
            rows.append(row)
        return rows

    # -- inference -----------------------------------------------------------------------

    def logits(self, query: str, documents: Sequence[str]) -> list[float]:
        """One raw relevance logit per document, in input order, as Python floats (float32 math)."""
        return self.logits_many([query] * len(documents), documents)

    def token_budget(self, device: str) -> int | None:
        """Padded tokens per forward pass: as asked, else 1,024 on CPUs and no bound on GPUs.

        On CPUs, small batches of similar length beat large padded ones (measured in
        ``benchmarks/local.py``); GPUs want the largest batches that fit.
        """
        if self.max_tokens_per_batch is not None:
            return self.max_tokens_per_batch
        return CPU_TOKEN_BUDGET if device == "cpu" else None

    def logits_many(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        """Raw logits of pairs whose queries may differ; one forward schedule for them all."""
        torch = _import_torch()
        loaded = self.load()
        features = self.encode_many(queries, documents)
        scores: list[float] = [0.0] * len(features)
        with torch.inference_mode():
            for batch in self.schedule(features):
                out = self._forward(loaded, [features[i] for i in batch])
                for i, value in zip(batch, out, strict=True):
                    scores[i] = value
        return scores

    def schedule(self, features: Sequence[dict[str, list[int]]]) -> list[list[int]]:
        """Row indices of each forward pass over encoded pairs, longest first.

        Each batch holds at most ``batch_size`` pairs and ``token_budget`` padded tokens.
        """
        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
        lengths = [len(features[i]["input_ids"]) for i in order]
        budget = self.token_budget(self.load().device)
        return [order[part] for part in plan_batches(lengths, self.batch_size, budget)]

    def collate(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        """One padded batch of encoded pairs (``encode_pairs`` rows), on the model's device."""
        return self._collate(self.load(), rows)

    def _forward(self, loaded: _Loaded, rows: list[dict[str, list[int]]]) -> list[float]:
        batch = self._collate(loaded, rows)
        if loaded.fast_forward is not None:
            logits = loaded.fast_forward(**batch)
        else:
            logits = loaded.model(**batch, return_dict=True).logits
        scores: list[float] = logits.view(-1).float().cpu().tolist()
        return scores

    def _collate(self, loaded: _Loaded, rows: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        torch = _import_torch()
        width = max(len(row["input_ids"]) for row in rows)
        batch: dict[str, Any] = {}
        for name in loaded.input_names:
            fill = loaded.pad_id if name == "input_ids" else 0
            padded = []
            for row in rows:
                values = [1] * len(row["input_ids"]) if name == "attention_mask" else row[name]
                pad = [fill] * (width - len(values))
                padded.append(pad + values if loaded.pad_left else values + pad)
            batch[name] = torch.tensor(padded, dtype=torch.long, device=loaded.device)
        return batch


class LocalReranker(Reranker):
    """A ``Reranker`` over a ``LocalModelRunner``; subclasses set defaults and the activation."""

    provider: ClassVar[str] = "local"

    def __init__(self, runner: LocalModelRunner) -> None:
        self.runner = runner
        self.model_name = runner.model_name

    @classmethod
    def build_tiny_checkpoint(cls, path: Path) -> Path:
        """Build a tiny randomly initialized checkpoint of this family's architecture at ``path``.

        The demo and ``eval`` fall back to it where the real weights cannot be loaded; its
        scores are meaningless and it must always be labelled as such.
        """
        raise NotImplementedError(f"{cls.__name__} has no tiny stand-in")

    def load(self) -> Self:
        """Load the model now rather than on the first call (e.g. at service start-up)."""
        self.runner.load()
        return self

    def _activate(self, logits: list[float]) -> list[float]:
        """Turn raw logits into the reranker's scores."""
        return logits

    def _score(self, query: str, documents: list[str]) -> list[float]:
        return self._activate(self.runner.logits(query, documents))

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        """Scores of (queries[i], documents[i]) pairs in one batched pass (used by ``serve``)."""
        return self._activate(self.runner.logits_many(queries, documents))

    def _repr_fields(self) -> dict[str, Any]:
        runner = self.runner
        return {
            "model_name": runner.model_name,
            "device": runner.requested_device,
            "batch_size": runner.batch_size,
            "max_length": runner.requested_max_length,
        }
