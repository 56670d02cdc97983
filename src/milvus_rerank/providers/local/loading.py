"""Loading a local model: from a directory, the Hugging Face cache or the hub, checked.

``ModelLoader`` reads the config first (the family refuses another family's checkpoint before
any weight is read), then the tokenizer, then the weights, and refuses what would load and
rank at random: a tokenizer without its files, weights another model's (``check_tokenizer``,
``check_weights_found``). The loaded weights are then copied out of their files
(``detach_from_files``), so a file replaced or cut under a running model cannot change its
scores or crash it. ``quiet_progress`` keeps transformers' progress bars off a service's
stderr.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from milvus_rerank.core.errors import ConfigurationError, RerankError
from milvus_rerank.providers.local.devices import (
    dtype_kwargs,
    import_torch,
    resolve_device,
    resolve_dtype,
)
from milvus_rerank.providers.local.family import Head, ModelFamily, ModelSource
from milvus_rerank.providers.local.options import LocalOptions

__all__ = [
    "MAX_MISSING_WEIGHTS",
    "MIN_VOCABULARY_SHARE",
    "TOKENIZER_FILES",
    "Loaded",
    "ModelLoader",
    "check_tokenizer",
    "check_weights_found",
    "detach_from_files",
    "quiet_progress",
]

_TRUTHY = {"1", "true", "yes", "on"}
#: A name the Hugging Face hub takes as a repo id (``huggingface_hub``'s ``validate_repo_id``
#: rule, which also refuses ``..`` and ``--``): ``name`` or ``owner/name``.
_HUB_NAME = re.compile(r"^(?:\w(?:[\w.-]*\w)?/)?\w(?:[\w.-]*\w)?$", re.ASCII)


@dataclass(frozen=True)
class Loaded:
    """A loaded model with its tokenizer, where it runs and the pair limit in force."""

    model: Any
    tokenizer: Any
    device: str
    dtype: str
    max_length: int
    pad_id: int
    #: The family's forward and activation for this model.
    head: Head
    #: What runs the forward: ``"torch"`` (tensors, inference mode) or ``"onnx"`` (numpy).
    backend: str = "torch"


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


def detach_from_files(model: Any) -> None:
    """Copy the model's CPU weights out of the checkpoint files they may still map.

    transformers (5.x, safetensors on Linux; ``torch.load(mmap=True)`` for ``.bin``) leaves
    weights that need no conversion as views of the memory-mapped file: a file overwritten
    under a running model would change its scores, and one truncated would kill the process
    with SIGBUS on the next forward. Each CPU tensor is cloned once (a shared, tied weight
    once for all its users); weights moved to an accelerator are copies already. The mapped
    pages are clean file cache the kernel can drop, so the transient cost is one copy.
    """
    torch = import_torch()
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()


class ModelLoader:
    """Loads one model for a runner: the tokenizer, the weights, the device and the limits.

    Args:
        model_name: A local directory, or a Hugging Face hub name.
        family: What decides the Auto class, the config check and the head.
        options: The runner's checked ``LocalOptions``.
    """

    def __init__(self, model_name: str, family: ModelFamily, options: LocalOptions) -> None:
        self.model_name = model_name
        self.family = family
        self.options = options

    def load(self) -> Loaded:
        """The tokenizer and model, checked, on their device, detached from their files.

        Raises:
            ConfigurationError: the device, dtype, weights or ``max_length`` cannot work.
        """
        torch = import_torch()
        device = resolve_device(self.options["device"])
        dtype = resolve_dtype(
            self.options["dtype"], self.options["use_fp16"], device, self.family.half_dtype
        )
        source = self._source()
        if source.path is not None:
            tokenizer, model = self._load_directory(source, dtype)
        else:
            tokenizer, model = self._load_from_hub(dtype, source)
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigurationError(
                f"model {self.model_name!r} has no fast (Rust) tokenizer; one is required"
            )
        head = self.family.bind(model, tokenizer, source)  # model.config: checked on loading
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
        detach_from_files(model)
        return Loaded(
            model=model,
            tokenizer=tokenizer,
            device=device,
            dtype=str(getattr(torch, dtype)).removeprefix("torch."),
            max_length=max_length,
            pad_id=int(pad_id),
            head=head,
        )

    def _source(self) -> ModelSource:
        """Where the model comes from: a model directory, else a hub name (both checked).

        Raises:
            ConfigurationError: a directory without config.json, a file, or no hub name.
        """
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
        return ModelSource(
            model_name=self.model_name,
            path=local_dir,
            revision=self.options["revision"],
            cache_dir=self.options["cache_dir"],
            trust_remote_code=self.options["trust_remote_code"],
        )

    def _load_directory(self, source: ModelSource, dtype: str) -> tuple[Any, Any]:
        """The tokenizer and model of a local directory; a failure names the directory."""
        directory = str(source.path)
        try:
            return self._load_pair(directory, True, dtype, source)
        except RerankError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError, ValueError, SafetensorError...
            raise ConfigurationError(
                f"Cannot load a reranker model from the directory {directory!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _load_pair(
        self, source: str, local_only: bool, dtype: str, model: ModelSource
    ) -> tuple[Any, Any]:
        """The tokenizer and model; the family checks the config before any weight is read."""
        import transformers

        common = self._common(local_only)
        config, tokenizer = self._config_and_tokenizer(source, local_only, model)
        factory = getattr(transformers, self.family.auto_class)
        with quiet_progress():  # transformers 5 draws a "Loading weights" bar
            loaded, info = factory.from_pretrained(  # the config checked above, not read again
                source,
                config=config,
                **common,
                **dtype_kwargs(transformers, dtype),
                output_loading_info=True,
            )
        check_weights_found(loaded, info.get("missing_keys") or (), model)
        return tokenizer, loaded

    def _common(self, local_only: bool) -> dict[str, Any]:
        """The ``from_pretrained`` arguments every file of the model is read with."""
        return {
            "trust_remote_code": self.options["trust_remote_code"],
            "revision": self.options["revision"],
            "cache_dir": self.options["cache_dir"],
            "local_files_only": local_only,
        }

    def _config_and_tokenizer(
        self, source: str, local_only: bool, model: ModelSource
    ) -> tuple[Any, Any]:
        """The config (checked by the family) and the tokenizer (checked against it)."""
        import transformers

        common = self._common(local_only)
        # config.json alone says a checkpoint is another family's: refuse it before its
        # weights load (gigabytes, and transformers' report of heads that do not fit).
        config = transformers.AutoConfig.from_pretrained(source, **common)
        self.family.check_config(config, model)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
        check_tokenizer(tokenizer, config, model)
        return config, tokenizer

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
        offline = self.options["local_files_only"]
        reason = "local_files_only=True" if offline else _hub_unreachable_reason()
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
        requested = self.options["max_length"]
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
