"""One local-model runner: load once, tokenize pairs, batch by length, forward in inference mode.

What differs between model families (the Auto class, padding side, how pairs are tokenized and
truncated, what forward to run, how outputs become scores) comes from their ``ModelFamily``
(``_family.py``); everything else lives here. Constructor options are declared once, in
``LocalOptions``, with their defaults in ``LOCAL_DEFAULTS``.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import math
import os
import re
import socket
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypedDict, TypeVar
from urllib.parse import urlsplit

from typing_extensions import Self, Unpack

from milvus_rerank.core.base import Reranker, validate_pairs
from milvus_rerank.core.errors import ConfigurationError, MissingDependencyError, RerankError
from milvus_rerank.core.results import Usage
from milvus_rerank.providers.local.batching import ascore_rows, score_rows, spread, unique_pairs
from milvus_rerank.providers.local.family import Head, ModelFamily, ModelSource, Rows
from milvus_rerank.providers.local.passages import (
    DEFAULT_MAX_PASSAGES,
    DEFAULT_PASSAGE_OVERLAP,
    LONG_DOCUMENTS,
    LongDocuments,
    passage_rows,
)

__all__ = [
    "DTYPES",
    "INSTRUCTION_PROVIDERS",
    "LOCAL_DEFAULTS",
    "Dtype",
    "LocalModelRunner",
    "LocalOptions",
    "ClippedText",
    "LocalReranker",
    "clip_texts",
    "longer_cuts",
    "plan_batches",
    "quiet_progress",
    "resolve_device",
    "resolve_dtype",
    "sigmoid",
    "sigmoid_all",
]

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
#: The ``dtype`` values, in ``Dtype``'s order.
DTYPES: tuple[Dtype, ...] = ("auto", "float32", "float16", "bfloat16")


class LocalOptions(TypedDict, total=False):
    """Options every local reranker takes (``**options: Unpack[LocalOptions]``).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...; None picks CUDA when present.
        dtype: ``"auto"`` (half precision on CUDA when ``use_fp16``, the family's fp16 or bf16;
            float32 elsewhere), or ``"float32"``, ``"float16"``, ``"bfloat16"`` on any device.
        use_fp16: With ``dtype="auto"``, run in half precision on CUDA (ignored on the CPU).
        batch_size: Upper bound of pairs per forward pass.
        max_length: Token limit of a pair; None takes the family's default (its reference's).
        max_tokens_per_batch: Upper bound of padded tokens per forward pass (None: 1,024 on
            CPUs, where small length-sorted batches run fastest, and no bound on GPUs).
        trust_remote_code: Allow custom modelling code (and custom activations) from the hub.
        revision: Hub revision (branch, tag or commit).
        cache_dir: Hugging Face cache directory.
        local_files_only: Never contact the hub.
        long_documents: ``"truncate"`` (score what fits, like the references) or
            ``"max_passage"`` (score every window of a long document, keep the best; see
            ``_passages.py``). A document that fits scores the same either way.
        passage_overlap: Tokens neighbouring windows share (``max_passage``; 64).
        max_passages: Windows scored per document at most (``max_passage``; 10); the rest of
            a longer document is not read.
        split_special_tokens: Read special-token strings (``<|im_end|>``, ``</s>``...) in
            queries, documents and instructions as plain text, so untrusted text cannot
            inject control tokens (chat turns) into a row. Off by default, as the references.
        batch_across_calls: Score concurrent calls (threads, ``arerank`` tasks, instruction
            views) together in shared forward passes (``_batching.py``); False scores each
            call on its own, in its own thread.
        batch_wait_ms: While calls do come together, how long a batch may wait for more
            (0 to 1,000; 0: never wait); a caller alone for ``IDLE_EXIT`` (0.25 s) never waits.
        batch_workers: Shared batches that may run their forward passes at once while more
            rows wait (None: 2 on CPUs, where a second pass keeps busy the cores one pass
            leaves idle between and within its operations, measured in
            ``benchmarks/batching.py``; 1 on GPUs). A lone call that fits one batch uses one.
    """

    device: str | None
    dtype: Dtype
    use_fp16: bool
    batch_size: int
    max_length: int | None
    max_tokens_per_batch: int | None
    trust_remote_code: bool
    revision: str | None
    cache_dir: str | None
    local_files_only: bool
    long_documents: LongDocuments
    passage_overlap: int
    max_passages: int
    split_special_tokens: bool
    batch_across_calls: bool
    batch_wait_ms: float
    batch_workers: int | None


#: The default of every ``LocalOptions`` key, in one place.
LOCAL_DEFAULTS: LocalOptions = {
    "device": None,
    "dtype": "auto",
    "use_fp16": True,
    "batch_size": 32,
    "max_length": None,
    "max_tokens_per_batch": None,
    "trust_remote_code": False,
    "revision": None,
    "cache_dir": None,
    "local_files_only": False,
    "long_documents": "truncate",
    "passage_overlap": DEFAULT_PASSAGE_OVERLAP,
    "max_passages": DEFAULT_MAX_PASSAGES,
    "split_special_tokens": False,
    "batch_across_calls": True,
    "batch_wait_ms": 2.0,
    "batch_workers": None,
}

_T = TypeVar("_T")
_TRUTHY = {"1", "true", "yes", "on"}
#: A long document is first tried cut at this many characters per token the model may read of
#: it (a generous multiple of the ~4 an English token covers; ``serve`` cuts at the same).
CHARS_PER_TOKEN = 32
#: A cut is kept only where it yields this many times the tokens that can be read.
CUT_MARGIN = 2
#: Pairs tokenized per hold of a runner's tokenizer lock: another caller's tokenization waits
#: for one slice of a large call, not the whole of it.
TOKENIZE_SLICE = 128
#: A name the Hugging Face hub takes as a repo id (``huggingface_hub``'s ``validate_repo_id``
#: rule, which also refuses ``..`` and ``--``): ``name`` or ``owner/name``.
_HUB_NAME = re.compile(r"^(?:\w(?:[\w.-]*\w)?/)?\w(?:[\w.-]*\w)?$", re.ASCII)
#: Default padded tokens per forward pass on CPUs (see ``LocalModelRunner.token_budget``).
CPU_TOKEN_BUDGET = 1024


def _import_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError("Local rerankers", "local", exc.name or "torch") from exc
    return torch


#: Threads inside ``quiet_progress`` (a per-thread depth), and the hook that makes them quiet.
_QUIET = threading.local()
_HOOK_LOCK = threading.Lock()
_hook_users = 0
_hook_previous: Any = None


def _quiet_hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A tqdm hook: a disabled bar in a quiet thread, else what was there before."""
    if getattr(_QUIET, "depth", 0) > 0:
        return factory(*args, **{**kwargs, "disable": True})
    previous = _hook_previous
    return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)


@contextmanager
def quiet_progress() -> Iterator[None]:
    """No transformers progress bars ("Loading weights", "Writing model shards") from this thread.

    A library's load should not write bars to a service's stderr, and the caller's own
    settings (``disable_progress_bar``, ``HF_HUB_DISABLE_PROGRESS_BARS``) stay as they are:
    a tqdm hook (``transformers.utils.logging.set_tqdm_hook``, transformers 5) is installed
    while any thread is inside, and it silences only the threads inside; other threads' bars
    go to the hook that was there before (or show as usual). The hook itself is process-wide
    state while installed: a hook set by someone else meanwhile is kept, not overwritten.
    Hub download bars (huggingface_hub's own) are not touched. With a transformers that has
    no hook (4.x), this does nothing: its bars show as before.
    """
    global _hook_users, _hook_previous
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:
        yield
        return
    with _HOOK_LOCK:
        if _hook_users == 0:
            _hook_previous = set_hook(_quiet_hook)
        _hook_users += 1
    _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
    try:
        yield
    finally:
        _QUIET.depth -= 1
        with _HOOK_LOCK:
            _hook_users -= 1
            if _hook_users == 0:
                current = set_hook(_hook_previous)
                if current is not _quiet_hook:  # replaced meanwhile: leave the new one
                    set_hook(current)
                _hook_previous = None


def _check_options(options: dict[str, Any]) -> LocalOptions:
    """``options`` over ``LOCAL_DEFAULTS``, each checked (``ConfigurationError`` naming it)."""
    unknown = sorted(set(options) - set(LOCAL_DEFAULTS))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for a local reranker; "
            f"the options are {', '.join(LOCAL_DEFAULTS)}"
        )
    merged: dict[str, Any] = {**LOCAL_DEFAULTS, **options}
    for name in (
        "batch_size",
        "max_length",
        "max_tokens_per_batch",
        "max_passages",
        "batch_workers",
    ):
        value = merged[name]
        if (value is not None or name in ("batch_size", "max_passages")) and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    overlap = merged["passage_overlap"]
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ConfigurationError(f"passage_overlap must be an int >= 0, got {overlap!r}")
    if merged["long_documents"] not in LONG_DOCUMENTS:
        raise ConfigurationError(
            f"long_documents must be one of {', '.join(map(repr, LONG_DOCUMENTS))}, "
            f"got {merged['long_documents']!r}"
        )
    windowing = sorted({"passage_overlap", "max_passages"} & set(options))
    if windowing and merged["long_documents"] != "max_passage":
        raise ConfigurationError(
            f"{' and '.join(windowing)} {'apply' if len(windowing) > 1 else 'applies'} only "
            f"with long_documents='max_passage' (windows of long documents); long_documents "
            f"is {merged['long_documents']!r}"
        )
    for name in (
        "use_fp16",
        "trust_remote_code",
        "local_files_only",
        "split_special_tokens",
        "batch_across_calls",
    ):
        if not isinstance(merged[name], bool):
            raise ConfigurationError(f"{name} must be True or False, got {merged[name]!r}")
    for name in ("device", "revision", "cache_dir"):
        value = merged[name]
        if isinstance(value, os.PathLike) and name == "cache_dir":
            merged[name] = value = os.fspath(value)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise ConfigurationError(f"{name} must be a non-empty str or None, got {value!r}")
    wait = merged["batch_wait_ms"]
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 1000:
        raise ConfigurationError(f"batch_wait_ms must be milliseconds, 0 to 1,000, got {wait!r}")
    if merged["dtype"] not in DTYPES:
        raise ConfigurationError(
            f"dtype must be one of {', '.join(map(repr, DTYPES))}, got {merged['dtype']!r}"
        )
    checked: LocalOptions = merged  # type: ignore[assignment]
    return checked


#: The local rerankers that take an ``instruction`` (the LLM rerankers). The registry cannot be
#: read from here (it imports the providers); a test keeps this equal to its answer.
INSTRUCTION_PROVIDERS = ("qwen3", "bge-llm", "mxbai-v2")


def _unknown_options(cls: type[LocalReranker], unknown: Sequence[str]) -> str:
    """Why ``unknown`` options are refused, with what was probably meant and what is taken."""
    own = cls.family_options()
    known = [*own, *LOCAL_DEFAULTS]
    hints = []
    for name in unknown:
        close = ["model_name"] if name == "model" else difflib.get_close_matches(name, known, 1)
        if name == "instruction":
            hints.append(f"only {', '.join(INSTRUCTION_PROVIDERS)} take an instruction")
        elif close:
            hints.append(f"{name!r}: did you mean {close[0]!r}?")
    mine = f"its own options: {', '.join(own)}; " if own else ""
    rest = f"{mine}every local reranker's options: {', '.join(LOCAL_DEFAULTS)}"
    return (
        f"unknown option(s) {', '.join(map(repr, unknown))} for {cls.__name__}"
        + (f" ({'; '.join(hints)})" if hints else "")
        + f". {rest[0].upper()}{rest[1:]}"
    )


#: What ``resolve_device`` tells a Python caller to do instead of a device that is not here.
DEVICE_FIX = "use device='cpu' or None"


def resolve_device(device: str | None, fix: str = DEVICE_FIX) -> str:
    """The torch device to use: the one asked for, else CUDA when present, else the CPU.

    ``fix`` ends the message about a device this machine lacks (the command line says it in
    its own terms: ``--device cpu``).

    Raises:
        ConfigurationError: ``device`` is not a device name, or not one this machine has.
    """
    torch = _import_torch()
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError(f"device {device!r} is not a torch device: {exc}") from None
    kind = parsed.type
    if kind == "cpu":
        return str(parsed)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"device {device!r} asks for CUDA, which this torch ({torch.__version__}) "
                f"cannot use here (no CUDA build or no GPU visible); {fix}"
            )
        count = int(torch.cuda.device_count())
        if parsed.index is not None and parsed.index >= count:
            raise ConfigurationError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s)"
            )
        return str(parsed)
    backend = getattr(torch.backends, kind, None) if kind == "mps" else getattr(torch, kind, None)
    if kind in ("mps", "xpu"):
        available = backend is not None and bool(backend.is_available())
        if not available:
            raise ConfigurationError(f"device {device!r} is not available on this machine; {fix}")
        return str(parsed)
    raise ConfigurationError(
        f"device {device!r} cannot run a reranker ({kind!r} devices hold no usable weights "
        "or are not supported); use 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu'"
    )


def resolve_dtype(dtype: Dtype, use_fp16: bool, device: str, half: str = "float16") -> str:
    """The weights' dtype: as asked, else ``half`` on CUDA with ``use_fp16``, else float32."""
    if dtype != "auto":
        return dtype
    return half if use_fp16 and device.startswith("cuda") else "float32"


def sigmoid(x: float) -> float:
    """The logistic function, without overflow for large negative logits."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def sigmoid_all(logits: list[float]) -> list[float]:
    """``sigmoid`` of each logit (the probability form of one-logit rerankers)."""
    return [sigmoid(x) for x in logits]


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
    dtype: str
    max_length: int
    pad_id: int
    #: The family's forward and activation for this model.
    head: Head


#: Characters a tokenizer may split words at, tried in turn by ``word_breaks``: spaces, and the
#: full-width punctuation that ends clauses in Chinese and Japanese text, which has no spaces.
BREAK_CANDIDATES = (" ", "\n", "。", "，", "、", "！", "？", "；")


def word_breaks(tokenizer: Any) -> tuple[str, ...]:
    """The ``BREAK_CANDIDATES`` at which ``tokenizer`` splits words before its model runs.

    A character is a break where the fast tokenizer's normalizer and pre-tokenizer cut
    ``"ab<char>cd"`` into pieces with a boundary right before or after it: then no text after
    a break changes how the words before it tokenize. None for a slow tokenizer or one with
    no pre-tokenizer (a Unigram or BPE model over whole runs of text, where a change far
    ahead can reach back).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if pre is None:
        return ()
    normalizer = getattr(backend, "normalizer", None)
    found = []
    for char in BREAK_CANDIDATES:
        text = f"ab{char}cd"
        try:
            if normalizer is not None:
                text = normalizer.normalize_str(text)
            pieces = pre.pre_tokenize_str(text)
        except Exception:  # noqa: BLE001, S112 - an unknown tokenizer: no cut, exact as before
            continue
        at = text.find("cd")
        ends = {end for _, (_, end) in pieces}
        starts = {start for _, (start, _) in pieces}
        if at > 0 and len(pieces) > 1 and (at in starts or at - 1 in ends):
            found.append(char)
    return tuple(found)


#: Every runner alive, so a forked child can free the locks its parent's threads held.
_LIVE_RUNNERS: weakref.WeakSet[LocalModelRunner] = weakref.WeakSet()


def _runners_after_fork() -> None:
    runners = list(_LIVE_RUNNERS)
    for runner in runners:
        runner._after_fork()
    if any(runner.loaded for runner in runners):
        # The parent's tokenizers may have used their Rust thread pool, whose threads a child
        # does not have: with TOKENIZERS_PARALLELISM=true (which turns off the library's own
        # fork guard) the child's first encode waits on them forever. Encode serially here.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_runners_after_fork)


#: A checkpoint missing more than this share of its model's weights is another model's.
MAX_MISSING_WEIGHTS = 0.5


def check_weights_found(model: Any, missing: Iterable[str], source: ModelSource) -> None:
    """Refuse a model most of whose weights the checkpoint did not hold.

    transformers fills missing weights with random ones and only logs it: weights of another
    architecture under a borrowed ``config.json`` would load, and rank at random. A missing
    head (a base model's checkpoint) is left to transformers' warning, as the references do.

    Raises:
        ConfigurationError: naming the checkpoint and how much of it was missing.
    """
    missing = set(missing)
    if not missing:
        return
    sizes = {name: int(p.numel()) for name, p in model.named_parameters()}
    total = sum(sizes.values())
    lost = sum(size for name, size in sizes.items() if name in missing)
    if total and lost > MAX_MISSING_WEIGHTS * total:
        kind = getattr(model.config, "model_type", "this")
        raise ConfigurationError(
            f"the weights of model {source.model_name!r} are not a {kind!r} model's: "
            f"{len(missing)} of {len(sizes)} weight tensors ({lost / total:.0%} of the "
            "parameters) are missing from the checkpoint, so they would be random; check that "
            "config.json and the weights come from the same model"
        )


#: Files a tokenizer is read from: one of them must be in a local model directory.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "sentencepiece.bpe.model",
    "spiece.model",
)
#: A tokenizer knowing under this share of the model's vocabulary is not the model's.
MIN_VOCABULARY_SHARE = 0.5


def check_tokenizer(tokenizer: Any, config: Any, source: ModelSource) -> None:
    """Refuse a tokenizer that cannot read text the way its model was trained to.

    transformers builds a tokenizer of only its special tokens from a directory without the
    tokenizer files: every word becomes the unknown token, and documents score by length.

    Raises:
        ConfigurationError: naming the directory and the files missing, or how small the
            tokenizer's vocabulary is beside the model's.
    """
    if source.path is not None and not any(
        (source.path / name).is_file() for name in TOKENIZER_FILES
    ):
        raise ConfigurationError(
            f"Cannot load reranker model {source.model_name!r}: the directory holds no "
            f"tokenizer file (one of {', '.join(TOKENIZER_FILES)}), so every word would read "
            "as unknown; copy the checkpoint's tokenizer files beside config.json and the weights"
        )
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    expected = getattr(text_config, "vocab_size", None)
    try:
        known = len(tokenizer)
    except TypeError:
        return
    if isinstance(expected, int) and expected > 0 and known < MIN_VOCABULARY_SHARE * expected:
        raise ConfigurationError(
            f"Cannot load reranker model {source.model_name!r}: its tokenizer knows {known} "
            f"tokens but the model's vocabulary has {expected}, so most words would read as "
            "unknown; the tokenizer files are missing or belong to another model"
        )


class FairLock:
    """A lock taken in the order it was asked for: a release hands it to the longest waiter.

    A plain ``threading.Lock`` lets the thread that releases it take it straight back, so a
    large call tokenizing slice after slice would keep another caller waiting until its end.
    A waiter interrupted (``KeyboardInterrupt``) leaves the queue, or passes the lock on if it
    was already handed to it.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self) -> None:
        """Take the lock, after every caller that asked for it before."""
        with self._mutex:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        try:
            turn.acquire()  # released by ``release``, which hands the lock over held
        except BaseException:
            with self._mutex:
                handed = turn not in self._waiters
                if not handed:
                    self._waiters.remove(turn)
            if handed:
                self.release()
            raise

    def release(self) -> None:
        """Hand the lock to the longest waiter, or free it."""
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of an unheld FairLock")
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class ClippedText(str):
    """A text cut by ``clip_texts``: the cut itself, with the whole text and the cut's tokens.

    It is the cut wherever a ``str`` goes; a family that needs more of the whole text than
    its first tokens (the cross-encoder's ``longest_first``, which compares whole lengths)
    reads ``whole`` (see ``longer_cuts``).
    """

    whole: str
    tokens: int

    @classmethod
    def of(cls, cut: str, whole: str, tokens: int) -> ClippedText:
        """``cut`` of ``whole``, which alone tokenizes to ``tokens`` tokens."""
        text = cls(cut)
        text.whole, text.tokens = whole, tokens
        return text


def _count(tokenizer: Any, texts: Sequence[str], split: bool) -> list[int]:
    """Tokens of each text alone, without added special tokens."""
    if not texts:
        return []
    ids = tokenizer(
        list(texts),
        add_special_tokens=False,
        return_attention_mask=False,
        verbose=False,  # whole on purpose: no "longer than the maximum" warning
        split_special_tokens=split,
    )["input_ids"]
    return [len(i) for i in ids]


def _cut_at_break(text: str, breaks: Sequence[str], limit: int) -> str | None:
    """``text`` up to its last break before ``limit`` characters (None: no break there)."""
    end = max(text.rfind(b, 0, limit + 1) for b in breaks)
    return text[:end] if end > 0 else None


def clip_texts(tokenizer: Any, texts: Sequence[str], read: int, split: bool) -> list[str]:
    """``texts``, each long one cut where none of the ``read`` tokens read of it can change.

    A model reading the head of a text (the tokenizer's right-side truncation) reads at most
    ``read`` of its tokens. Rather than tokenize megabytes to read those, a longer text is
    cut at the last break (a character the tokenizer splits words at, see ``word_breaks``)
    before ``CHARS_PER_TOKEN * read`` characters, and the cut is kept only if it alone
    tokenizes to ``CUT_MARGIN * read`` tokens or more. Words before a break tokenize the same
    whatever follows it, so the text's first ``read`` tokens, and so the rows and scores, are
    those of the whole text. A cut short of that (whitespace runs, long tokens) grows fourfold
    until it is kept or reaches the whole text; a text with no break to cut at (a tokenizer
    that splits no words first, or one long word) is tokenized whole, as before. A kept cut
    is a ``ClippedText``.
    """
    out = list(texts)
    if getattr(tokenizer, "truncation_side", "right") != "right":
        return out  # the tail is what is read
    breaks = word_breaks(tokenizer)
    if not breaks:
        return out
    limit = CHARS_PER_TOKEN * read
    pending = [i for i, t in enumerate(out) if len(t) > limit]
    while pending:
        cuts = {i: c for i in pending if (c := _cut_at_break(out[i], breaks, limit)) is not None}
        counts = _count(tokenizer, list(cuts.values()), split)
        kept = set()
        for (i, cut), tokens in zip(cuts.items(), counts, strict=True):
            if tokens >= CUT_MARGIN * read:
                out[i] = ClippedText.of(cut, texts[i], tokens)
                kept.add(i)
        limit *= 4
        pending = [i for i in pending if i not in kept and len(out[i]) > limit]
    return out


def longer_cuts(tokenizer: Any, first: str, second: str, split: bool) -> tuple[str, str]:
    """Cuts of two texts whose token counts compare as the whole texts' do.

    ``first`` and ``second`` may be ``ClippedText`` cuts: for each, a longer cut (or the whole
    text) replaces it until the counts decide whether the whole ``first`` has more tokens than
    the whole ``second``. A cut's head tokens are the whole text's (``clip_texts``), and its
    count never exceeds the whole text's; the side with fewer tokens grows, fourfold each
    time, so the work is bounded by the shorter text.
    """
    breaks = word_breaks(tokenizer)
    sides = [_Side.of(tokenizer, text, split) for text in (first, second)]
    while True:
        a, b = sides
        if (a.whole and b.whole) or (b.whole and a.tokens > b.tokens):
            break
        if a.whole and b.tokens >= a.tokens:
            break
        side = a if not a.whole and (a.tokens <= b.tokens or b.whole) else b
        side.grow(tokenizer, breaks, split)
    return sides[0].cut, sides[1].cut


@dataclass
class _Side:
    """A text being read further for ``longer_cuts``: its cut so far and the cut's tokens."""

    text: str
    cut: str
    tokens: int
    limit: int

    @property
    def whole(self) -> bool:
        return len(self.cut) == len(self.text)

    @classmethod
    def of(cls, tokenizer: Any, text: str, split: bool) -> _Side:
        if isinstance(text, ClippedText):
            return cls(text.whole, str(text), text.tokens, len(text))
        return cls(str(text), str(text), _count(tokenizer, [text], split)[0], len(text))

    def grow(self, tokenizer: Any, breaks: Sequence[str], split: bool) -> None:
        """A cut at a break before four times the characters, or the whole text."""
        self.limit *= 4
        cut = (
            self.text
            if len(self.text) <= self.limit
            else _cut_at_break(self.text, breaks, self.limit)
        )
        if cut is not None and len(cut) > len(self.cut):
            self.cut, self.tokens = cut, _count(tokenizer, [cut], split)[0]


class LocalModelRunner:
    """Scores (query, document) pairs with a Hugging Face model, the way ``family`` says.

    The model loads once, lazily and thread-safely, on first use. Pairs are tokenized once
    (by the family), sorted by length and cut into batches bounded by ``batch_size`` and
    ``max_tokens_per_batch``, so little compute goes to padding. Forward passes (the family's)
    run under ``torch.inference_mode()``.
    """

    def __init__(
        self, model_name: str, family: ModelFamily, **options: Unpack[LocalOptions]
    ) -> None:
        if not isinstance(model_name, (str, os.PathLike)) or not str(model_name).strip():
            raise ConfigurationError(f"model_name must be a hub name or a path, got {model_name!r}")
        settings = _check_options(dict(options))
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
        self._loaded: _Loaded | None = None
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

    def load(self) -> _Loaded:
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

    def _load_pair(
        self, source: str, local_only: bool, dtype: str, model: ModelSource
    ) -> tuple[Any, Any]:
        """The tokenizer and model; the family checks the config before any weight is read."""
        import transformers

        common = {
            "trust_remote_code": self.trust_remote_code,
            "revision": self.revision,
            "cache_dir": self.cache_dir,
            "local_files_only": local_only,
        }
        # config.json alone says a checkpoint is another family's: refuse it before its
        # weights load (gigabytes, and transformers' report of heads that do not fit).
        config = transformers.AutoConfig.from_pretrained(source, **common)
        self.family.check_config(config, model)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
        check_tokenizer(tokenizer, config, model)
        factory = getattr(transformers, self.family.auto_class)
        with quiet_progress():  # transformers 5 draws a "Loading weights" bar
            loaded, info = factory.from_pretrained(  # the config checked above, not read again
                source,
                config=config,
                **common,
                **_dtype_kwargs(transformers, dtype),
                output_loading_info=True,
            )
        check_weights_found(loaded, info.get("missing_keys") or (), model)
        return tokenizer, loaded

    def _load(self) -> _Loaded:
        torch = _import_torch()
        device = resolve_device(self.requested_device)
        dtype = resolve_dtype(self.dtype, self.use_fp16, device, self.family.half_dtype)
        path = Path(self.model_name).expanduser()
        local_dir = path if path.is_dir() else None
        if local_dir is None:
            self._check_hub_name(path)
        elif not (local_dir / "config.json").is_file():
            what = "is empty" if not any(local_dir.iterdir()) else "holds no config.json"
            raise ConfigurationError(
                f"Cannot load a reranker model from the directory {str(local_dir)!r}: it {what}, "
                "so it holds no model (a model directory has config.json, the weights and the "
                "tokenizer files)"
            )
        source = ModelSource(
            model_name=self.model_name,
            path=local_dir,
            revision=self.revision,
            cache_dir=self.cache_dir,
            trust_remote_code=self.trust_remote_code,
        )
        if local_dir is not None:
            try:
                tokenizer, model = self._load_pair(str(local_dir), True, dtype, source)
            except RerankError:
                raise
            except Exception as exc:  # noqa: BLE001 - OSError, ValueError, SafetensorError...
                raise ConfigurationError(
                    f"Cannot load a reranker model from the directory {str(local_dir)!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        else:
            tokenizer, model = self._load_from_hub(dtype, source)
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigurationError(
                f"model {self.model_name!r} has no fast (Rust) tokenizer; one is required"
            )
        head = self.family.bind(model, tokenizer, source)  # model.config: checked in _load_pair
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            raise ConfigurationError(f"the tokenizer of {self.model_name!r} has no pad token")
        max_length = self._resolve_max_length(tokenizer, model.config)
        model.eval()
        try:
            model.to(device)
        except (RuntimeError, AssertionError) as exc:  # out of memory, driver trouble
            raise ConfigurationError(
                f"Cannot move model {self.model_name!r} to device {device!r}: {exc}"
            ) from exc
        return _Loaded(
            model=model,
            tokenizer=tokenizer,
            device=device,
            dtype=str(getattr(torch, dtype)).removeprefix("torch."),
            max_length=max_length,
            pad_id=int(pad_id),
            head=head,
        )

    def _check_hub_name(self, path: Path) -> None:
        """Refuse a model name that is no directory and cannot be a hub name (a mistyped path).

        Raises:
            ConfigurationError: ``path`` is a file, or the name is no valid hub repo id.
        """
        if path.exists():
            raise ConfigurationError(
                f"Cannot load reranker model {self.model_name!r}: it is a file, not a model "
                "directory (one that holds config.json, the weights and the tokenizer files)"
            )
        name = self.model_name
        if not _HUB_NAME.match(name) or ".." in name or "--" in name:
            raise ConfigurationError(
                f"Cannot load reranker model {self.model_name!r}: no such directory "
                f"({str(path.absolute())!r} does not exist), and the name is no Hugging Face "
                "hub name (such as 'BAAI/bge-reranker-v2-m3') either"
            )

    def _load_from_hub(self, dtype: str, source: ModelSource) -> tuple[Any, Any]:
        try:
            return self._load_pair(self.model_name, True, dtype, source)
        except RerankError:
            raise
        except (OSError, ValueError):
            pass  # not in the local cache: try the hub below, if allowed and reachable
        except Exception as exc:  # noqa: BLE001 - corrupt cached weights, for one
            raise ConfigurationError(
                f"Cannot load reranker model {self.model_name!r} from the Hugging Face cache: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
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
            return self._load_pair(self.model_name, False, dtype, source)
        except RerankError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to fetch or read the weights
            raise ConfigurationError(
                f"Cannot load reranker model {self.model_name!r} from {_hub_endpoint()}: "
                f"{type(exc).__name__}: {exc}. {hint}"
            ) from exc

    def _resolve_max_length(self, tokenizer: Any, config: Any) -> int:
        """The asked (or the family's default) pair limit, checked against the model."""
        limit = self.family.max_positions(config)
        requested = self.requested_max_length
        if requested is not None and limit is not None and requested > limit:
            raise ConfigurationError(
                f"max_length={requested} is longer than model {self.model_name!r} can encode: "
                f"its position table holds {limit} tokens"
            )
        max_length = requested or self.family.default_max_length(tokenizer, config)
        if limit is not None:
            max_length = min(max_length, limit)
        self.family.check_max_length(tokenizer, max_length)
        return max_length

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
        loaded: _Loaded,
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
        """Padded tokens per forward pass: as asked, else 1,024 on CPUs and no bound on GPUs.

        On CPUs, small batches of similar length beat large padded ones (measured in
        ``benchmarks/local.py``); GPUs want the largest batches that fit.
        """
        if self.max_tokens_per_batch is not None:
            return self.max_tokens_per_batch
        return CPU_TOKEN_BUDGET if device == "cpu" else None

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
        torch = _import_torch()
        loaded = self.load()
        raw: list[float] = [0.0] * len(rows)
        with torch.inference_mode():
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

    def _forward(self, loaded: _Loaded, rows: list[dict[str, list[int]]]) -> list[float]:
        out = loaded.head.forward(self._collate(loaded, rows))
        scores: list[float] = out.reshape(-1).float().cpu().tolist()
        if len(scores) != len(rows):
            raise RuntimeError(
                f"{type(self.family).__name__} returned {len(scores)} scores for {len(rows)} pairs"
            )
        return scores

    def _collate(self, loaded: _Loaded, rows: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        torch = _import_torch()
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
            batch[name] = torch.tensor(padded, dtype=torch.long, device=loaded.device)
        return batch


@dataclass(frozen=True)
class Prepared:
    """Encoded rows of some pairs: ``rows[i]`` belongs to pair ``owners[i]`` (of ``pairs``)."""

    rows: Rows
    owners: list[int]
    pairs: int


def _dtype_kwargs(transformers: Any, dtype: str) -> dict[str, Any]:
    """``from_pretrained``'s dtype argument (``torch_dtype`` before transformers 4.56).

    Loading straight into the dtype spares a float32 copy of large models.
    """
    import torch

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": getattr(torch, dtype)}


class LocalReranker(Reranker):
    """A ``Reranker`` over a ``LocalModelRunner`` and a ``ModelFamily``.

    A family's module subclasses this with its ``provider``, ``default_model`` and an
    ``__init__(model_name=default_model, *, <family options>, **options: Unpack[LocalOptions])``
    that passes its ``ModelFamily`` instance here.
    """

    provider: ClassVar[str] = "local"
    batching = "rows"  # serve feeds its runner rows (a declared capability, see Reranker)
    #: The model loaded when none is named.
    default_model: ClassVar[str]

    def __init__(
        self, model_name: str, family: ModelFamily, **options: Unpack[LocalOptions]
    ) -> None:
        unknown = sorted(set(options) - set(LOCAL_DEFAULTS))
        if unknown:
            raise ConfigurationError(_unknown_options(type(self), unknown))
        self.family = family
        self.runner = LocalModelRunner(model_name, family, **options)
        self.model_name = self.runner.model_name

    @classmethod
    def family_options(cls) -> tuple[str, ...]:
        """The keyword options this class takes besides ``LocalOptions`` (e.g. ``instruction``).

        Read from the constructor's keyword-only parameters, so the command line and error
        messages follow each family's own signature.
        """
        parameters = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)

    if not TYPE_CHECKING:  # for mypy, a missing attribute stays an error

        def __getattr__(self, name: str) -> Any:
            if name in ("with_instruction", "instruction"):
                raise AttributeError(
                    f"{type(self).__name__} takes no instruction; the rerankers that do are "
                    f"{', '.join(INSTRUCTION_PROVIDERS)}"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def build_tiny_checkpoint(cls, path: Path) -> Path:
        """Build a tiny randomly initialized checkpoint of this family's architecture at ``path``.

        The demo and ``eval`` fall back to it where the real weights cannot be loaded; its
        scores are meaningless and it must always be labelled as such.
        """
        raise NotImplementedError(f"{cls.__name__} has no tiny stand-in")

    def load(self) -> Self:
        """Load the model now rather than on the first call (e.g. at service start-up).

        Raises:
            ConfigurationError: the model, device, dtype or ``max_length`` cannot work.
        """
        self.runner.load()
        return self

    def input_window(self) -> int:
        """The pair token limit in force (``max_length``, or the family's default); loads."""
        return self.runner.load().max_length

    def passages_per_document(self) -> int:
        """Windows of one document the model may read (``serve`` sizes its text cap by it).

        ``max_passages`` with ``long_documents="max_passage"``, else 1.
        """
        runner = self.runner
        return runner.max_passages if runner.long_documents == "max_passage" else 1

    def _scores_and_tokens(
        self, queries: Sequence[str], documents: Sequence[str]
    ) -> tuple[list[float], list[int]]:
        """Scores and tokens per pair: in shared batches (``batch_across_calls``) or alone.

        Identical pairs are scored once (``unique_pairs``): they share one score, so equal
        texts keep their input order, and their tokens count once.
        """
        unique_queries, unique_documents, where = unique_pairs(queries, documents)
        if self.runner.options["batch_across_calls"]:
            scored = score_rows(self.runner, self.family, unique_queries, unique_documents)
        else:
            scored = self.runner.scores_and_tokens(unique_queries, unique_documents, self.family)
        return spread(scored, where)

    def _score(self, query: str, documents: list[str]) -> list[float]:
        return self._scores_and_tokens([query] * len(documents), documents)[0]

    def _score_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        scores, tokens = self._scores_and_tokens([query] * len(documents), documents)
        return scores, Usage(tokens=sum(tokens))

    async def _ascore_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        if not self.runner.options["batch_across_calls"]:
            return await asyncio.to_thread(self._score_usage, query, documents)
        queries, unique_documents, where = unique_pairs([query] * len(documents), documents)
        scored = await ascore_rows(self.runner, self.family, queries, unique_documents)
        scores, tokens = spread(scored, where)
        return scores, Usage(tokens=sum(tokens))

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        """Scores of (queries[i], documents[i]) pairs in one batched pass (used by ``serve``).

        Raises:
            InvalidInputError: ``queries`` and ``documents`` differ in length, or hold non-text.
        """
        pair_queries, docs = validate_pairs(queries, documents)
        return self._scores_and_tokens(pair_queries, docs)[0] if docs else []

    def _repr_fields(self) -> dict[str, Any]:
        runner = self.runner
        fields: dict[str, Any] = {
            "model_name": runner.model_name,
            "device": runner.requested_device,
            "batch_size": runner.batch_size,
            "max_length": runner.requested_max_length,
        }
        if runner.dtype != "auto":
            fields["dtype"] = runner.dtype
        passages = {
            "long_documents": runner.long_documents,
            "passage_overlap": runner.passage_overlap,
            "max_passages": runner.max_passages,
            "split_special_tokens": runner.split_special_tokens,
        }
        fields.update({k: v for k, v in passages.items() if v != LOCAL_DEFAULTS.get(k)})
        for name in ("batch_across_calls", "batch_wait_ms", "batch_workers"):
            if runner.options[name] != LOCAL_DEFAULTS[name]:
                fields[name] = runner.options[name]
        return {**fields, **self.family.describe()}
