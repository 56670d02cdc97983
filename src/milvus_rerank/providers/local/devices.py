"""Where and in what precision a local model runs: torch itself, the device, the dtype.

``import_torch`` is the one place the local extra's absence becomes a typed error.
"""

from __future__ import annotations

from typing import Any

from milvus_rerank.core.errors import ConfigurationError, MissingDependencyError
from milvus_rerank.providers.local.options import Dtype

__all__ = ["DEVICE_FIX", "dtype_kwargs", "import_torch", "resolve_device", "resolve_dtype"]

#: What ``resolve_device`` tells a Python caller to do instead of a device that is not here.
DEVICE_FIX = "use device='cpu' or None"


def import_torch() -> Any:
    """The ``torch`` module (``transformers`` checked too).

    Raises:
        MissingDependencyError: the ``local`` extra is not installed.
    """
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError("Local rerankers", "local", exc.name or "torch") from exc
    return torch


def resolve_device(device: str | None, fix: str = DEVICE_FIX) -> str:
    """The torch device to use: the one asked for, else CUDA when present, else the CPU.

    ``fix`` ends the message about a device this machine lacks (the command line says it in
    its own terms: ``--device cpu``).

    Raises:
        ConfigurationError: ``device`` is not a device name, or not one this machine has.
    """
    torch = import_torch()
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


def dtype_kwargs(transformers: Any, dtype: str) -> dict[str, Any]:
    """``from_pretrained``'s dtype argument (``torch_dtype`` before transformers 4.56).

    Loading straight into the dtype spares a float32 copy of large models.
    """
    torch = import_torch()
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": getattr(torch, dtype)}
