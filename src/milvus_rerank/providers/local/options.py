"""The options every local reranker takes: declared once, with their defaults and their checks.

``LocalOptions`` types a reranker's ``**options``; ``LOCAL_DEFAULTS`` holds each default;
``check_options`` checks a reranker's options (``_check_backend`` the backend's) and
``unknown_options`` says why a name is not one. The checks of options several families share
(``normalize``, ``query_max_length``) live here too, so each family states them the same way.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from typing import Any, Literal, TypedDict

from milvus_rerank.core.checks import batch_wait_ms, int_at_least, positive_number
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local.passages import (
    DEFAULT_MAX_PASSAGES,
    DEFAULT_PASSAGE_OVERLAP,
    LONG_DOCUMENTS,
    LongDocuments,
)

__all__ = [
    "BACKENDS",
    "DTYPES",
    "INSTRUCTION_PROVIDERS",
    "LOCAL_DEFAULTS",
    "MAX_THREADS",
    "Dtype",
    "LocalOptions",
    "QUANTIZATIONS",
    "Backend",
    "Quantization",
    "check_bool",
    "check_options",
    "check_query_max_length",
    "unknown_options",
]

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
#: The ``dtype`` values, in ``Dtype``'s order.
DTYPES: tuple[Dtype, ...] = ("auto", "float32", "float16", "bfloat16")
Backend = Literal["torch", "onnx"]
#: The ``backend`` values: torch (any device, any dtype) or ONNX Runtime (CPU, fp32 or int8).
BACKENDS: tuple[Backend, ...] = ("torch", "onnx")
Quantization = Literal["int8"]
#: The ``quantization`` values besides None (the weights as they are).
QUANTIZATIONS: tuple[Quantization, ...] = ("int8",)


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
            CPUs, 512 with ``backend="onnx"``, where small length-sorted batches run fastest,
            and no bound on GPUs).
        trust_remote_code: Allow custom modelling code (and custom activations) from the hub.
        revision: Hub revision (branch, tag or commit).
        cache_dir: Hugging Face cache directory.
        local_files_only: Never contact the hub.
        long_documents: ``"truncate"`` (score what fits, like the references) or
            ``"max_passage"`` (score every window of a long document, keep the best; see
            ``passages.py``). A document that fits scores the same either way.
        passage_overlap: Tokens neighbouring windows share (``max_passage``; 64).
        max_passages: Windows scored per document at most (``max_passage``; 10); the rest of
            a longer document is not read.
        split_special_tokens: Read special-token strings (``<|im_end|>``, ``</s>``...) in
            queries, documents and instructions as plain text, so untrusted text cannot
            inject control tokens (chat turns) into a row. Off by default, as the references.
        batch_across_calls: Score concurrent calls (threads, ``arerank`` tasks, instruction
            views) together in shared forward passes (``batching.py``); False scores each
            call on its own, in its own thread.
        batch_wait_ms: While calls do come together, how long a batch may wait for more
            (0 to 1,000; 0: never wait); a caller alone for ``IDLE_EXIT`` (0.25 s) never waits.
        batch_workers: Shared batches that may run their forward passes at once while more
            rows wait (None: 2 on CPUs, where a second pass keeps busy the cores one pass
            leaves idle between and within its operations, measured in
            ``benchmarks/batching.py``; 1 on GPUs). A lone call that fits one batch uses one.
        backend: ``"torch"`` (the default: any device and dtype) or ``"onnx"`` (ONNX Runtime
            on the CPU, without torch where the model ships an ONNX file; the encoder
            families only). See ``onnx_loading.py``.
        quantization: None, or ``"int8"`` (``backend="onnx"`` only): ONNX Runtime's dynamic
            int8 quantization of the model's file, cached (a pre-quantized file is used as it is).
        onnx_file: The ONNX file to run, relative to the model (``backend="onnx"`` only; None:
            ``onnx/model.onnx`` if the model ships one, else one exported with torch, cached).
        threads: Threads one ONNX Runtime forward pass uses (``backend="onnx"`` only; None:
            the CPUs this process may run on).
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
    backend: Backend
    quantization: Quantization | None
    onnx_file: str | None
    threads: int | None


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
    "backend": "torch",
    "quantization": None,
    "onnx_file": None,
    "threads": None,
}

#: Options that are positive ints (those that may be None mean "the default").
_POSITIVE_INTS = (
    "batch_size",
    "max_length",
    "max_tokens_per_batch",
    "max_passages",
    "batch_workers",
    "threads",
)
_NOT_NONE = ("batch_size", "max_passages")
_FLAGS = ("use_fp16", "trust_remote_code", "local_files_only", "split_special_tokens")
_NAMES = ("device", "revision", "cache_dir", "onnx_file")

#: The local rerankers that take an ``instruction`` (the LLM rerankers). The registry cannot be
#: read from here (it imports the providers); a test keeps this equal to its answer.
INSTRUCTION_PROVIDERS = ("qwen3", "bge-llm", "mxbai-v2")


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is True or False.

    Raises:
        ConfigurationError: naming ``name`` and the value.
    """
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def check_query_max_length(value: object) -> int | None:
    """``value`` if it is a positive int or None (a family's ``query_max_length``).

    Raises:
        ConfigurationError: naming ``query_max_length`` and the value.
    """
    if value is not None:
        positive_number("query_max_length", value, kind=int)
    return value  # type: ignore[return-value]


def check_options(options: dict[str, Any]) -> LocalOptions:
    """``options`` over ``LOCAL_DEFAULTS``, each checked.

    Raises:
        ConfigurationError: naming the first option that is unknown or wrong, and its value.
    """
    unknown = sorted(set(options) - set(LOCAL_DEFAULTS))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for a local reranker; "
            f"the options are {', '.join(LOCAL_DEFAULTS)}"
        )
    merged: dict[str, Any] = {**LOCAL_DEFAULTS, **options}
    merged["device"] = _one_device(merged["device"])
    for name in _POSITIVE_INTS:
        if merged[name] is not None or name in _NOT_NONE:
            positive_number(name, merged[name], kind=int)
    int_at_least("passage_overlap", merged["passage_overlap"], 0)
    if merged["threads"] is not None and merged["threads"] > MAX_THREADS:
        raise ConfigurationError(
            f"threads must be at most {MAX_THREADS} (threads of one ONNX Runtime forward pass; "
            f"this machine has {os.cpu_count()} CPUs), got {merged['threads']!r}"
        )
    _check_long_documents(merged, set(options))
    for name in (*_FLAGS, "batch_across_calls"):
        check_bool(name, merged[name])
    for name in _NAMES:
        value = merged[name]
        if isinstance(value, os.PathLike) and name in ("cache_dir", "onnx_file"):
            merged[name] = value = os.fspath(value)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise ConfigurationError(f"{name} must be a non-empty str or None, got {value!r}")
    batch_wait_ms("batch_wait_ms", merged["batch_wait_ms"])
    if merged["dtype"] not in DTYPES:
        raise ConfigurationError(
            f"dtype must be one of {', '.join(map(repr, DTYPES))}, got {merged['dtype']!r}"
        )
    _check_backend(merged, set(options))
    checked: LocalOptions = merged  # type: ignore[assignment]
    return checked


#: The most ``threads`` one forward pass may ask for: far past any machine's CPUs, short of
#: what makes ONNX Runtime fail to allocate its pool (and blame the file).
MAX_THREADS = 1024

#: The options that only the ONNX backend reads.
_ONNX_ONLY = ("quantization", "onnx_file", "threads")


def _check_backend(merged: dict[str, Any], given: set[str]) -> None:
    """``backend`` is known, and the ONNX options come with ``backend="onnx"`` only.

    The ONNX backend runs ONNX Runtime's CPU build in float32 (or int8): another device or a
    half dtype is refused rather than silently ignored. ``quantization="int8"`` with torch is
    refused too: torch's dynamic quantization (``torch.ao``) is deprecated, and ONNX
    Runtime's int8 kernels are the maintained CPU path.
    """
    backend = merged["backend"]
    if backend not in BACKENDS:
        raise ConfigurationError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        )
    if merged["quantization"] not in (None, *QUANTIZATIONS):
        raise ConfigurationError(
            f"quantization must be None or one of {', '.join(map(repr, QUANTIZATIONS))}, "
            f"got {merged['quantization']!r}"
        )
    if backend == "onnx":
        if merged["device"] not in (None, "cpu"):
            raise ConfigurationError(
                f"device {merged['device']!r} cannot run backend='onnx': it runs ONNX Runtime "
                "on the CPU; use device='cpu' (or None), or backend='torch' for an accelerator"
            )
        if merged["use_fp16"] and "use_fp16" in given:
            raise ConfigurationError(
                "use_fp16=True cannot run backend='onnx': it runs float32, or int8 with "
                "quantization='int8'"
            )
        if merged["dtype"] not in ("auto", "float32"):
            raise ConfigurationError(
                f"dtype {merged['dtype']!r} cannot run backend='onnx': it runs float32, or "
                "int8 with quantization='int8'"
            )
        return
    onnx_only = [name for name in _ONNX_ONLY if name in given and merged[name] is not None]
    if onnx_only:
        name = onnx_only[0]
        why = (
            "the torch backend runs the weights' own dtype; int8 is ONNX Runtime's dynamic "
            "quantization"
            if name == "quantization"
            else "the torch backend does not read it"
        )
        raise ConfigurationError(
            f"{name}={merged[name]!r} needs backend='onnx' ({why}); backend is {backend!r}"
        )


def _one_device(device: object) -> object:
    """``device`` with pymilvus-model's spellings read: ``""`` is "pick one" (None).

    Raises:
        ConfigurationError: a list of devices (FlagEmbedding's multi-process pool), naming
            what to do instead.
    """
    if device == "":  # CrossEncoderRerankFunction's default: let the library choose
        return None
    if isinstance(device, (list, tuple)):
        raise ConfigurationError(
            f"device takes one device, got {device!r}: a local reranker runs on one device "
            "(pymilvus-model's devices=[...] starts a process per device); build one reranker "
            "per device, e.g. BGEReranker(model, device='cuda:0'), and spread calls over them"
        )
    return device


#: pymilvus-model's and FlagEmbedding's option names, and what replaces each here.
MIGRATED_OPTIONS = {
    "devices": "device='cuda:0' (one device per reranker; build one reranker per device)",
    "activation_fct": (
        "activation='sigmoid' or 'identity' (cross-encoders) or normalize= (BGE): by name, "
        "not a torch module"
    ),
    "default_activation_function": "activation='sigmoid' or 'identity'",
}


def _check_long_documents(merged: dict[str, Any], given: set[str]) -> None:
    """``long_documents`` is known, and window options come only with ``max_passage``."""
    if merged["long_documents"] not in LONG_DOCUMENTS:
        raise ConfigurationError(
            f"long_documents must be one of {', '.join(map(repr, LONG_DOCUMENTS))}, "
            f"got {merged['long_documents']!r}"
        )
    windowing = sorted({"passage_overlap", "max_passages"} & given)
    if windowing and merged["long_documents"] != "max_passage":
        raise ConfigurationError(
            f"{' and '.join(windowing)} {'apply' if len(windowing) > 1 else 'applies'} only "
            f"with long_documents='max_passage' (windows of long documents); long_documents "
            f"is {merged['long_documents']!r}"
        )


def unknown_options(owner: str, own: Sequence[str], unknown: Sequence[str]) -> str:
    """Why ``unknown`` options are refused by ``owner`` (whose own options are ``own``).

    It names what was probably meant and every option that is taken.
    """
    known = [*own, *LOCAL_DEFAULTS]
    hints = []
    for name in unknown:
        close = ["model_name"] if name == "model" else difflib.get_close_matches(name, known, 1)
        if name == "instruction":
            hints.append(f"only {', '.join(INSTRUCTION_PROVIDERS)} take an instruction")
        elif name in MIGRATED_OPTIONS:
            hints.append(f"{name!r}: use {MIGRATED_OPTIONS[name]}")
        elif close:
            hints.append(f"{name!r}: did you mean {close[0]!r}?")
    mine = f"its own options: {', '.join(own)}; " if own else ""
    rest = f"{mine}every local reranker's options: {', '.join(LOCAL_DEFAULTS)}"
    return (
        f"unknown option(s) {', '.join(map(repr, unknown))} for {owner}"
        + (f" ({'; '.join(hints)})" if hints else "")
        + f". {rest[0].upper()}{rest[1:]}"
    )
