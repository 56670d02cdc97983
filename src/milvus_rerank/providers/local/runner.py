"""One local-model runner: load once, tokenize pairs, batch by length, forward in inference mode.

What differs between model families (the Auto class, padding side, how pairs are tokenized and
truncated, what forward to run, how outputs become scores) comes from their ``ModelFamily``
(``family.py``); loading is ``loading.py``'s, long texts are cut by ``clipping.py``. The runner
owns what is left: the lazy thread-safe load, tokenizing in fair slices, length-sorted batches
within a token budget, padding and the forward passes. With ``backend="onnx"`` only loading
(``onnx_loading.py``), padding (numpy arrays) and the forward (an ONNX Runtime session) differ.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from typing_extensions import Unpack

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.forks import after_fork
from milvus_rerank.providers.local.clipping import clip_texts
from milvus_rerank.providers.local.devices import import_torch
from milvus_rerank.providers.local.family import ModelFamily, Rows
from milvus_rerank.providers.local.loading import Loaded, ModelLoader
from milvus_rerank.providers.local.locks import FairLock
from milvus_rerank.providers.local.options import LocalOptions, check_options
from milvus_rerank.providers.local.passages import passage_rows

__all__ = [
    "CPU_TOKEN_BUDGET",
    "ONNX_TOKEN_BUDGET",
    "TOKENIZE_SLICE",
    "LocalModelRunner",
    "Prepared",
    "plan_batches",
]

_T = TypeVar("_T")
#: Pairs tokenized per hold of a runner's tokenizer lock: another caller's tokenization waits
#: for one slice of a large call, not the whole of it.
TOKENIZE_SLICE = 128
#: Default padded tokens per forward pass on CPUs (see ``LocalModelRunner.token_budget``).
CPU_TOKEN_BUDGET = 1024
#: Default padded tokens per ONNX Runtime forward pass (``backend="onnx"``, CPUs only): its
#: kernels ran the MiniLM-L12 bench's pairs faster in batches half the torch path's size.
ONNX_TOKEN_BUDGET = 512


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


#: Every runner alive, so a forked child can free the locks its parent's threads held.
_LIVE_RUNNERS: weakref.WeakSet[LocalModelRunner] = weakref.WeakSet()


@after_fork
def _runners_after_fork() -> None:
    runners = list(_LIVE_RUNNERS)
    for runner in runners:
        runner._after_fork()
    if any(runner.loaded for runner in runners):
        # The parent's tokenizers may have used their Rust thread pool, whose threads a child
        # does not have: with TOKENIZERS_PARALLELISM=true (which turns off the library's own
        # fork guard) the child's first encode waits on them forever. Encode serially here.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"


class LocalModelRunner:
    """Scores (query, document) pairs with a Hugging Face model, the way ``family`` says.

    The model loads once, lazily and thread-safely, on first use. Pairs are tokenized once
    (by the family), sorted by length and cut into batches bounded by ``batch_size`` and
    ``max_tokens_per_batch``, so little compute goes to padding. Forward passes (the family's)
    run under ``torch.inference_mode()``, or in an ONNX Runtime session (``backend="onnx"``).
    """

    def __init__(
        self, model_name: str, family: ModelFamily, **options: Unpack[LocalOptions]
    ) -> None:
        if not isinstance(model_name, (str, os.PathLike)) or not str(model_name).strip():
            raise ConfigurationError(f"model_name must be a hub name or a path, got {model_name!r}")
        settings = check_options(dict(options))
        self.model_name = os.fspath(model_name)
        self.family = family
        self.options = settings
        self.requested_device = settings["device"]
        self.dtype = settings["dtype"]
        self.use_fp16 = settings["use_fp16"]
        self.batch_size = settings["batch_size"]
        self.requested_max_length = settings["max_length"]
        self.max_tokens_per_batch = settings["max_tokens_per_batch"]
        self.trust_remote_code = settings["trust_remote_code"]
        self.revision = settings["revision"]
        self.cache_dir = settings["cache_dir"]
        self.local_files_only = settings["local_files_only"]
        self.long_documents = settings["long_documents"]
        self.passage_overlap = settings["passage_overlap"]
        self.max_passages = settings["max_passages"]
        self.split_special_tokens = family.split_special_tokens = settings["split_special_tokens"]
        self.backend = family.backend = settings["backend"]
        if self.backend == "onnx" and not family.onnx_ready:
            raise ConfigurationError(
                f"backend='onnx' runs the encoder cross-encoders (cross-encoder, bge); "
                f"the {type(family).__name__.removesuffix('Family')} family has no ONNX path "
                "yet: use backend='torch'"
            )
        self._loaded: Loaded | None = None
        self._load_lock = threading.Lock()
        # Fast tokenizers keep truncation state on the shared Rust object: one caller at a time,
        # in turn (a large call takes it a slice at a time and queues behind waiting callers).
        self._tokenizer_lock = FairLock()
        _LIVE_RUNNERS.add(self)

    def _after_fork(self) -> None:
        """A forked child has none of the parent's threads: locks they held start free."""
        self._load_lock = threading.Lock()
        self._tokenizer_lock = FairLock()

    # -- loading -------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the model is already in memory."""
        return self._loaded is not None

    def load(self) -> Loaded:
        """Load the tokenizer and model once; later calls return the same objects.

        Raises:
            ConfigurationError: the device, dtype, weights or ``max_length`` cannot work.
        """
        loaded = self._loaded
        if loaded is None:
            with self._load_lock:
                if self._loaded is None:
                    self._loaded = self._load()
                loaded = self._loaded
        return loaded

    def _load(self) -> Loaded:
        if self.backend == "onnx":
            from milvus_rerank.providers.local.onnx_loading import OnnxLoader

            return OnnxLoader(self.model_name, self.family, self.options).load()
        return ModelLoader(self.model_name, self.family, self.options).load()

    # -- tokenization --------------------------------------------------------------------

    def encode_pairs(self, query: str, documents: Sequence[str]) -> Rows:
        """Tokenize (query, document) pairs without padding, truncated like the reference."""
        return self.encode_many([query] * len(documents), documents)

    def encode_many(
        self, queries: Sequence[str], documents: Sequence[str], family: ModelFamily | None = None
    ) -> Rows:
        """Tokenize pairs whose queries may differ (``queries[i]`` goes with ``documents[i]``).

        ``family`` (default: the runner's) lets a view encode its own way over the same model,
        e.g. an LLM reranker with another instruction.
        """
        encoder = family or self.family
        return self._tokenize(encoder, encoder.encode, queries, documents)

    def _tokenize(
        self,
        family: ModelFamily,
        step: Callable[[Any, Sequence[str], Sequence[str], int], Sequence[_T]],
        queries: Sequence[str],
        documents: Sequence[str],
    ) -> list[_T]:
        """``step`` (the family's encode or locate) over the pairs, cut, a slice at a time.

        Each slice of ``TOKENIZE_SLICE`` pairs takes the tokenizer lock alone, so another
        caller's small call is tokenized between two slices of a large one, not after it all.
        A family tokenizes each pair on its own, so the rows are those of one whole call.
        """
        loaded = self.load()
        size = max(len(queries), len(documents))
        out: list[_T] = []
        for start in range(0, size, TOKENIZE_SLICE):  # no pairs: no rows, no tokenizer call
            part = slice(start, start + TOKENIZE_SLICE)
            with self._tokenizer_lock:
                cut_queries, cut_documents = self._clip(
                    loaded, family, queries[part], documents[part]
                )
                out += step(loaded.tokenizer, cut_queries, cut_documents, loaded.max_length)
        return out

    def _clip(
        self,
        loaded: Loaded,
        family: ModelFamily,
        queries: Sequence[str],
        documents: Sequence[str],
    ) -> tuple[Sequence[str], Sequence[str]]:
        """Queries and documents cut where no text past the cut can be read (tokenizer lock)."""
        tokenizer, max_length = loaded.tokenizer, loaded.max_length
        read = family.query_tokens_read(max_length)
        return (
            self.clip_queries(tokenizer, queries, read),
            self.clip_documents(tokenizer, documents, max_length),
        )

    def clip_documents(
        self, tokenizer: Any, documents: Sequence[str], max_length: int
    ) -> Sequence[str]:
        """``documents``, a long one cut where no text past the cut can be read.

        The model reads at most ``max_length`` tokens of a document per window (the families
        keep the head of a document, with the tokenizer's right-side truncation), and at most
        ``max_passages`` windows (``max_passage``; else one): ``read`` tokens in all. Rather
        than tokenize megabytes to read those, a longer document is cut (``clip_texts``).
        """
        passages = self.max_passages if self.long_documents == "max_passage" else 1
        return clip_texts(tokenizer, documents, max_length * passages, self.split_special_tokens)

    def clip_queries(
        self, tokenizer: Any, queries: Sequence[str], read: int | None
    ) -> Sequence[str]:
        """``queries``, each distinct long one cut once (``clip_texts``) where ``read`` is set.

        ``read`` is the most tokens of a query the family reads (``query_tokens_read``; None:
        the family may read any of it, so nothing is cut). Every window of a document repeats
        the query, so windows do not multiply it. Callers pass ``[query] * n``: each distinct
        query is tokenized (to check its cut) once, not once per document.
        """
        if read is None:
            return queries
        unique = list(dict.fromkeys(queries))
        cut = dict(
            zip(unique, clip_texts(tokenizer, unique, read, self.split_special_tokens), strict=True)
        )
        return [cut[q] for q in queries]

    # -- inference -----------------------------------------------------------------------

    def token_budget(self, device: str) -> int | None:
        """Padded tokens per forward pass: as asked, else a CPU budget, no bound on GPUs.

        On CPUs, small batches of similar length beat large padded ones (measured in
        ``benchmarks/local.py``): 1,024 tokens on torch, 512 on ONNX Runtime
        (``ONNX_TOKEN_BUDGET``); GPUs want the largest batches that fit.
        """
        if self.max_tokens_per_batch is not None:
            return self.max_tokens_per_batch
        if device != "cpu":
            return None
        return ONNX_TOKEN_BUDGET if self.backend == "onnx" else CPU_TOKEN_BUDGET

    def scores(self, query: str, documents: Sequence[str]) -> list[float]:
        """The family's scores of (query, document) pairs, in input order."""
        return self.scores_many([query] * len(documents), documents)

    def scores_many(
        self, queries: Sequence[str], documents: Sequence[str], family: ModelFamily | None = None
    ) -> list[float]:
        """Scores of pairs whose queries may differ; one forward schedule for them all."""
        return self.scores_and_tokens(queries, documents, family)[0]

    def scores_and_tokens(
        self, queries: Sequence[str], documents: Sequence[str], family: ModelFamily | None = None
    ) -> tuple[list[float], list[int]]:
        """Scores of pairs, and the tokens the model read for each pair.

        The token counts are what ``Usage.tokens`` sums: real tokens, padding not counted.
        One ``prepare``, one ``forward`` over all rows, one ``finish``.
        """
        prepared = self.prepare(queries, documents, family)
        return self.finish(prepared, self.forward(prepared.rows))

    def prepare(
        self, queries: Sequence[str], documents: Sequence[str], family: ModelFamily | None = None
    ) -> Prepared:
        """Encode pairs into the rows the model reads, each row tagged with its pair.

        With ``long_documents="truncate"``, one row per pair, truncated like the reference.
        With ``"max_passage"``, a pair whose document did not fit owns one row per window of
        it (``passage_rows``), which ``finish`` folds back into the best window's score; the
        windows of all pairs go through the same length-sorted batches.
        """
        if self.long_documents == "truncate":
            rows = self.encode_many(queries, documents, family)
            return Prepared(rows=rows, owners=list(range(len(rows))), pairs=len(rows))
        encoder = family or self.family
        located = self._tokenize(encoder, encoder.locate, queries, documents)
        rows, owners = [], []
        for pair, item in enumerate(located):
            passages = passage_rows(item, self.passage_overlap, self.max_passages)
            rows += passages
            owners += [pair] * len(passages)
        return Prepared(rows=rows, owners=owners, pairs=len(located))

    def forward(self, rows: Sequence[dict[str, list[int]]]) -> list[float]:
        """Raw outputs (before the family's activation) of encoded rows, in row order.

        Rows are sorted by length and cut into ``schedule``'s batches: any set of rows, from
        any number of calls, can go through one ``forward`` and score as they would alone.
        """
        loaded = self.load()
        raw: list[float] = [0.0] * len(rows)
        # ONNX Runtime keeps no autograd state: only torch needs inference mode.
        mode = import_torch().inference_mode() if loaded.backend == "torch" else None
        with mode or contextlib.nullcontext():
            for batch in self.schedule(rows):
                out = self._forward(loaded, [rows[i] for i in batch])
                for i, value in zip(batch, out, strict=True):
                    raw[i] = value
        return raw

    def finish(self, prepared: Prepared, raw: Sequence[float]) -> tuple[list[float], list[int]]:
        """Per-pair scores (the best of a pair's rows, then the activation) and token counts."""
        if len(raw) != len(prepared.rows):
            raise RuntimeError(f"{len(raw)} outputs for {len(prepared.rows)} rows")
        best: list[float] = [-math.inf] * prepared.pairs
        tokens = [0] * prepared.pairs
        for row, owner, value in zip(prepared.rows, prepared.owners, raw, strict=True):
            best[owner] = max(best[owner], value)
            tokens[owner] += len(row["input_ids"])
        return self.load().head.activate(best), tokens

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

    def _forward(self, loaded: Loaded, rows: list[dict[str, list[int]]]) -> list[float]:
        out = loaded.head.forward(self._collate(loaded, rows)).reshape(-1)
        if loaded.backend == "torch":
            out = out.float().cpu()
        scores: list[float] = out.tolist()
        if len(scores) != len(rows):
            raise RuntimeError(
                f"{type(self.family).__name__} returned {len(scores)} scores for {len(rows)} pairs"
            )
        return scores

    def _collate(self, loaded: Loaded, rows: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        if loaded.backend == "onnx":
            import numpy

            def tensor(padded: list[list[int]]) -> Any:
                return numpy.array(padded, dtype=numpy.int64)
        else:
            torch = import_torch()

            def tensor(padded: list[list[int]]) -> Any:
                return torch.tensor(padded, dtype=torch.long, device=loaded.device)

        width = max(len(row["input_ids"]) for row in rows)
        left = self.family.padding_side == "left"
        batch: dict[str, Any] = {}
        for name in (*rows[0], "attention_mask"):
            fill = loaded.pad_id if name == "input_ids" else 0
            padded = []
            for row in rows:
                values = [1] * len(row["input_ids"]) if name == "attention_mask" else row[name]
                pad = [fill] * (width - len(values))
                padded.append(pad + values if left else values + pad)
            batch[name] = tensor(padded)
        return batch


@dataclass(frozen=True)
class Prepared:
    """Encoded rows of some pairs: ``rows[i]`` belongs to pair ``owners[i]`` (of ``pairs``)."""

    rows: Rows
    owners: list[int]
    pairs: int
