"""Loading a local model for ``backend="onnx"``: the tokenizer and config, and an ONNX session.

``OnnxLoader`` reads and checks the config and tokenizer as the torch loader does (the same
directory, cache and hub rules and errors), then finds the graph (``onnx_files.py``: the
file the model ships, ``onnx_file``, or one exported with torch and cached), quantizes it
where asked, and opens it (``onnx_session.py``). With a shipped file nothing here imports
torch: ``transformers`` reads configs and tokenizers without it.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

from milvus_rerank.core.errors import ConfigurationError, MissingDependencyError
from milvus_rerank.providers.local.family import Head, ModelSource
from milvus_rerank.providers.local.loading import Loaded, ModelLoader, _hub_unreachable_reason
from milvus_rerank.providers.local.onnx_files import (
    EXPORTER,
    SHIPPED_FILE,
    cached,
    differs_from_weights,
    is_quantized,
    model_files_key,
    quantize_int8,
    read_graph,
    shipped_file,
)
from milvus_rerank.providers.local.onnx_session import OnnxScorer, machine_threads, refusal
from milvus_rerank.providers.local.options import LocalOptions
from milvus_rerank.providers.local.runner_batching import workers_for

log = logging.getLogger("milvus_rerank.providers.onnx")

__all__ = ["OnnxLoader", "OnnxModel"]


class OnnxModel:
    """What the ONNX backend loads in place of a torch model: the config and the session.

    Attributes:
        config: The checkpoint's ``transformers`` config.
        scorer: The checked ONNX Runtime session.
        exported: Whether the graph was exported here (False: the model shipped it).
    """

    def __init__(self, config: Any, scorer: OnnxScorer, exported: bool) -> None:
        self.config = config
        self.scorer = scorer
        self.exported = exported


class OnnxLoader(ModelLoader):
    """Loads one model for a runner with ``backend="onnx"`` (see the module docstring)."""

    def load(self) -> Loaded:
        """The tokenizer and the checked ONNX session, on the CPU.

        Raises:
            ConfigurationError: the model, its ONNX file or ``max_length`` cannot work.
            MissingDependencyError: ONNX Runtime is not installed, or an export needs torch.
        """
        _import_onnxruntime()
        source = self._source()
        if source.path is not None:
            tokenizer, model = self._load_directory(source, "float32")
        else:
            tokenizer, model = self._load_from_hub("float32", source)
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigurationError(
                f"model {self.model_name!r} has no fast (Rust) tokenizer; one is required"
            )
        scorer: OnnxScorer = model.scorer
        head: Head = self.family.bind_onnx(scorer.run, model.config, source)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            raise ConfigurationError(f"the tokenizer of {self.model_name!r} has no pad token")
        max_length = self._resolve_max_length(tokenizer, model.config)
        scorer.probe_length(max_length, tokenizer)
        return Loaded(
            model=model,
            tokenizer=tokenizer,
            device="cpu",
            dtype="int8" if scorer.quantized else "float32",
            max_length=max_length,
            pad_id=int(pad_id),
            head=head,
            backend="onnx",
        )

    def _load_pair(
        self, source: str, local_only: bool, dtype: str, model: ModelSource
    ) -> tuple[Any, Any]:
        """The tokenizer and an ``OnnxModel``: the shipped graph, else an exported one."""
        config, tokenizer = self._config_and_tokenizer(source, local_only, model)
        path = self._shipped(model, local_only)
        graph = read_graph(path) if path is not None else None
        if path is not None and model.path is not None and differs_from_weights(graph, model.path):
            why = (
                f"its token embeddings differ from the weights in {str(model.path)!r}: it is "
                "another model's file (another fine-tune, or another seed)"
            )
            if self.options["onnx_file"] is not None:
                raise refusal(path, why)  # asked for by name: refused
            # The default file of a checkpoint fine-tuned in place: the weights are the model.
            log.warning("%s; exporting the weights instead", refusal(path, why))
            path = graph = None
        exported = path is None
        if path is None:
            path = self._export(model, config)
        if self.options["quantization"] == "int8":
            quantized = self._quantized(path, graph)
            path, graph = quantized, (graph if quantized == path else None)
        threads = self.options["threads"] or machine_threads(self._workers())
        scorer = OnnxScorer(path, config, tokenizer, threads, graph)
        return tokenizer, OnnxModel(config, scorer, exported)

    def _workers(self) -> int:
        """Forward passes that may run at once: the shared batches' workers (1 without)."""
        if not self.options["batch_across_calls"]:
            return 1
        return workers_for(self.options["batch_workers"], cpu=True)

    def _shipped(self, model: ModelSource, local_only: bool) -> Path | None:
        """The file the model ships (``onnx_file`` or ``SHIPPED_FILE``), or None to export.

        From the hub, a file not cached yet is fetched when the hub may be used; else the
        model is exported from its cached weights.
        """
        try:
            return shipped_file(model, self.options["onnx_file"], local_only)
        except OSError:
            if not local_only or self.options["local_files_only"]:
                raise
            if _hub_unreachable_reason() is None:
                raise  # the loader's hub pass downloads it
            if self.options["onnx_file"] is not None:
                raise ConfigurationError(
                    f"onnx_file {self.options['onnx_file']!r} of {self.model_name!r} is not in "
                    "the Hugging Face cache, and the hub cannot be reached to fetch it"
                ) from None
            return None  # offline: export from the cached weights

    def _export(self, model: ModelSource, config: Any) -> Path:
        """A graph exported from the torch weights, cached (``onnx_files.cached``).

        Raises:
            MissingDependencyError: torch is not installed (the exporter).
        """
        for needed in ("torch",):  # torch's own (TorchScript) exporter needs nothing more
            try:
                importlib.import_module(needed)
            except ImportError:
                raise MissingDependencyError(
                    f"Exporting model {self.model_name!r} to ONNX (it ships no {SHIPPED_FILE}; "
                    "or pass onnx_file= a file it has)",
                    "onnx-export",
                    needed,
                ) from None
        import torch

        from milvus_rerank.providers.local.cls_forward import DISABLE_ENV

        folder = model.path if model.path is not None else _hub_folder(model)
        parts = {
            "exporter": EXPORTER,
            "torch": torch.__version__,
            "family": type(self.family).__name__,
            "model": self.model_name,
            "revision": self.options["revision"],
            "files": model_files_key(folder) if folder is not None else None,
            "config": config.to_json_string(use_diff=False),
            "full_forward": os.environ.get(DISABLE_ENV, ""),
        }
        return cached("export", parts, self._export_into)

    def _export_into(self, folder: Path) -> None:
        """Load the torch weights (float32, CPU) and export their forward into ``folder``."""
        from milvus_rerank.providers.local.onnx_export import export_graph

        options: LocalOptions = {
            **self.options,
            "device": "cpu",
            "dtype": "float32",
            "backend": "torch",
            "quantization": None,
            "onnx_file": None,
            "threads": None,
        }
        loaded = ModelLoader(self.model_name, self.family, options).load()
        export_graph(loaded, folder)

    def _quantized(self, path: Path, graph: Any = None) -> Path:
        """``path`` as int8: as it is where quantized already, else quantized and cached.

        ``graph`` is ``path``'s, where the caller has read it already.
        """
        if is_quantized(graph if graph is not None else read_graph(path)):
            return path
        try:
            return quantize_int8(path)
        except ConfigurationError:
            raise
        except Exception as exc:  # noqa: BLE001 - the quantizer's errors on odd graphs
            raise ConfigurationError(
                f"Cannot quantize the ONNX file {str(path)!r} to int8: {type(exc).__name__}: "
                f"{exc}; pass a pre-quantized file as onnx_file, or leave quantization out"
            ) from exc


def _hub_folder(model: ModelSource) -> Path | None:
    """The Hugging Face cache folder of a hub model's files (its snapshot), if cached."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        model.model_name, "config.json", cache_dir=model.cache_dir, revision=model.revision
    )
    return Path(found).parent if isinstance(found, str) else None


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("The ONNX backend", "onnx", exc.name or "onnxruntime") from exc
    return onnxruntime
