"""Where the ONNX backend's file comes from: shipped with the model, or made once and cached.

A model directory or hub repo that ships ``onnx/model.onnx`` (or the ``onnx_file`` asked for,
sentence-transformers' convention) is used as it is. Otherwise the model is exported once with
torch, and ``quantization="int8"`` quantizes a float file once (ONNX Runtime's dynamic int8);
both land in the cache (``onnx_cache_dir``), keyed by what decides the graph, built in a
temporary folder and renamed into place, so a second load reuses them and two processes never
read a half-written file. The user's model directory is never written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from milvus_rerank._version import __version__
from milvus_rerank.core.checks import clip
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local.family import ModelSource

__all__ = [
    "CACHE_ENV",
    "EXPORTER",
    "MODEL_FILE",
    "QUANTIZED_OPS",
    "SHIPPED_FILE",
    "cached",
    "FINGERPRINT_ROWS",
    "differs_from_weights",
    "embedding_rows",
    "embedding_shape",
    "external_files",
    "is_quantized",
    "content_digest",
    "model_files_key",
    "onnx_cache_dir",
    "quantize_int8",
    "weights_rows",
    "read_graph",
    "shipped_file",
]

#: The environment variable that moves the cache (default ``~/.cache/milvus-rerank``).
CACHE_ENV = "MILVUS_RERANK_CACHE"
#: Where a model ships its ONNX file (sentence-transformers' and optimum's layout).
SHIPPED_FILE = "onnx/model.onnx"
#: The file name of a cached graph inside its folder.
MODEL_FILE = "model.onnx"
#: How graphs are exported (``onnx_export.py``): part of the cache key, so a change re-exports.
EXPORTER = "torch.onnx.export(dynamo=False, opset=17, full model, eager attention)"
#: Operators that only a quantized graph holds: such a file is int8 already.
QUANTIZED_OPS = frozenset(
    {
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QAttention",
        "DequantizeLinear",
    }
)
#: Files of a model directory that decide an exported graph (weights, config, tokenizer).
_KEY_SUFFIXES = (".safetensors", ".bin", ".json", ".pt", ".pth")


def onnx_cache_dir() -> Path:
    """The folder of exported and quantized graphs.

    ``$MILVUS_RERANK_CACHE/onnx``, else ``$XDG_CACHE_HOME/milvus-rerank/onnx``, else
    ``~/.cache/milvus-rerank/onnx``.
    """
    root = os.environ.get(CACHE_ENV, "").strip()
    if not root:
        base = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
        root = os.path.join(base, "milvus-rerank")
    return Path(root).expanduser() / "onnx"


def _digest(parts: object) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def content_digest(path: Path) -> str:
    """The SHA-256 of ``path``'s bytes: what the cache keys on.

    Not names, sizes and mtimes: builds with normalized timestamps give two versions of a
    fine-tuned model the same ones.
    """
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def model_files_key(directory: Path) -> list[tuple[str, int, str]]:
    """Each weights, config and tokenizer file of ``directory``: (name, size, content hash).

    The model's own ``onnx/`` folder is left out (its files are not what an export reads);
    a folder named ``onnx`` above the model directory is not.
    """
    found = []
    for path in sorted(directory.rglob("*")):
        inside = path.relative_to(directory).parts
        if path.suffix in _KEY_SUFFIXES and path.is_file() and "onnx" not in inside[:-1]:
            found.append(("/".join(inside), path.stat().st_size, content_digest(path)))
    return found


def _file_key(path: Path) -> tuple[str, int, str]:
    return (str(path.resolve()), path.stat().st_size, content_digest(path))


def cached(kind: str, parts: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """The cached graph of ``kind`` keyed by ``parts``: built by ``build(folder)`` if missing.

    ``build`` writes ``MODEL_FILE`` (and any external data) into a private temporary folder,
    which is renamed into place whole: another process sees the folder complete or not at
    all. Where two build at once, the first rename wins and the other's folder is dropped.
    An entry whose file is gone or not the size it was written at (a cleaner, a full disk) is
    built again; temporary folders left by killed processes are swept after ``STALE_AFTER``.

    Raises:
        ConfigurationError: the cache folder cannot be written (naming it).
    """
    key = {"kind": kind, "package": __version__, **parts}
    root = onnx_cache_dir()
    final = root / f"{kind}-{_digest(key)}"
    done = final / MODEL_FILE
    if _complete(final):
        return done
    try:
        root.mkdir(parents=True, exist_ok=True)
        _sweep(root)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    except OSError as exc:
        raise _unwritable(root, exc) from None
    try:
        build(work)
        os.chmod(work, 0o755)  # noqa: S103 - mkdtemp's 0700 would hide it from other users
        record = {**key, "size": (work / MODEL_FILE).stat().st_size}
        (work / SOURCE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        _move_into_place(work, final)
    except OSError as exc:
        raise _unwritable(root, exc) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return done


#: The record beside each cached graph: its key, and the size ``MODEL_FILE`` was written at.
SOURCE_FILE = "source.json"
#: Seconds after which a temporary build folder is taken as left by a killed process.
STALE_AFTER = 6 * 3600


def _complete(final: Path) -> bool:
    """Whether ``final`` holds its graph whole: the file there, at the size it was written."""
    try:
        size = json.loads((final / SOURCE_FILE).read_text("utf-8"))["size"]
        return bool((final / MODEL_FILE).stat().st_size == size)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _move_into_place(work: Path, final: Path) -> None:
    """Rename ``work`` to ``final``; a damaged ``final`` is moved aside and dropped first."""
    for _ in range(3):
        try:
            os.rename(work, final)
            return
        except OSError:
            if _complete(final):  # another process's finished copy
                return
            if not final.exists():
                raise
        aside = final.with_name(f".{final.name}.damaged-{os.getpid()}")
        with contextlib.suppress(OSError):
            os.rename(final, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.rename(work, final)


def _sweep(root: Path) -> None:
    """Drop temporary folders (``.<entry>.<random>``) older than ``STALE_AFTER``."""
    now = time.time()
    for folder in root.glob(".*"):
        with contextlib.suppress(OSError):
            if folder.is_dir() and now - folder.stat().st_mtime > STALE_AFTER:
                shutil.rmtree(folder, ignore_errors=True)


def _unwritable(root: Path, exc: OSError) -> ConfigurationError:
    return ConfigurationError(
        f"Cannot write the ONNX cache {str(root)!r} ({exc.strerror or exc}); set "
        f"{CACHE_ENV} to a writable folder with room for the model, or pass onnx_file= a "
        "file the model ships"
    )


def shipped_file(source: ModelSource, name: str | None, local_only: bool) -> Path | None:
    """The ONNX file the model ships: ``name`` (None: ``SHIPPED_FILE``); None if it has none.

    ``name`` is relative to the model directory or hub repo (an absolute path is taken as
    it is). From the hub, the file (and its external data) is downloaded into the Hugging
    Face cache like the model's other files.

    Raises:
        ConfigurationError: ``name`` was asked for and the model holds no such file.
        OSError: from the hub, with ``local_only``, where the file is not cached yet.
    """
    wanted = name or SHIPPED_FILE
    if source.path is not None:
        candidate = source.path / wanted
        with contextlib.suppress(OSError):  # a name too long for the file system: not there
            if candidate.is_file():
                return candidate
    else:
        found = _from_hub(source, wanted, local_only)
        if found is not None:
            return found
    if name is None:
        return None
    where = str(source.path) if source.path is not None else f"hub repo {source.model_name!r}"
    raise ConfigurationError(
        f"onnx_file {clip(repr(name), 200)} is not a file in {where}: name a file of the "
        "model or an absolute path to one (such as "
        f"{SHIPPED_FILE!r} or 'onnx/model_qint8_avx512_vnni.onnx'), or leave onnx_file out "
        "to use the shipped file or export one"
    )


def _from_hub(source: ModelSource, wanted: str, local_only: bool) -> Path | None:
    """``wanted`` of the hub repo (None: the repo has no such file); external data too."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    def fetch(filename: str) -> Path:
        return Path(
            hf_hub_download(
                source.model_name,
                filename,
                revision=source.revision,
                cache_dir=source.cache_dir,
                local_files_only=local_only,
            )
        )

    try:
        path = fetch(wanted)
    except LocalEntryNotFoundError:
        raise  # not cached: the loader asks the hub next, where it may
    except EntryNotFoundError:
        return None
    folder = PurePosixPath(wanted).parent
    for data in external_files(path):
        fetch(str(folder / data))
    return path


def read_graph(path: Path) -> Any:
    """The ``onnx`` model of ``path`` without its weights' data, or None where it is no graph."""
    try:
        import onnx

        return onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - garbage bytes: the session says so, naming the file
        return None


def external_files(path: Path) -> list[str]:
    """The external data files ``path``'s graph names, relative to its folder."""
    model = read_graph(path)
    if model is None:
        return []
    names = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                names.add(entry.value)
    return sorted(names)


def is_quantized(model: Any) -> bool:
    """Whether a graph (``read_graph``) is quantized already: it holds int8 operators."""
    return model is not None and any(n.op_type in QUANTIZED_OPS for n in model.graph.node)


def embedding_shape(model: Any) -> tuple[int, int] | None:
    """The [vocabulary, hidden] shape of the table ``input_ids`` indexes (None: not found)."""
    if model is None:
        return None
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if "input_ids" in node.input and node.op_type in ("Gather", "EmbedLayerNormalization"):
            for name in node.input:
                dims = shapes.get(name)
                if dims is not None and len(dims) == 2:
                    return int(dims[0]), int(dims[1])
    return None


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice on the root logger: kept off a service's stderr."""

    def advice(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(advice)


def quantize_int8(path: Path) -> Path:
    """``path`` quantized to int8 (ONNX Runtime's ``quantize_dynamic``), cached.

    Weights of MatMul and Gather nodes become int8, activations are quantized on the fly:
    the graph is about a quarter of the size and runs on the CPU's integer dot-product
    instructions. Keyed by the float file (its path, size and modification time).
    """
    import onnx
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def build(folder: Path) -> None:
        model = onnx.load(str(path))
        _check_float32(model, path)
        # Exporters record intermediate shapes the quantizer's own shape inference rejects.
        del model.graph.value_info[:]
        large = model.ByteSize() > 1_800_000_000
        plain = folder / "float.onnx"
        onnx.save(model, str(plain), save_as_external_data=large)
        del model
        with _quiet_quantizer():
            quantize_dynamic(
                plain,
                folder / MODEL_FILE,
                weight_type=QuantType.QInt8,
                use_external_data_format=large,
                # Type the tensors its shape inference cannot (the legacy export's Shape ops).
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        for leftover in folder.glob(f"{plain.name}*"):  # the float copy and its data
            leftover.unlink()
        _check_opens(folder / MODEL_FILE, path)

    return cached("int8", {"onnxruntime": ort_version, "source": _file_key(path)}, build)


#: ONNX tensor types of half-precision weights (FLOAT16, BFLOAT16): the quantizer's float
#: input must be float32.
_HALF_TYPES = frozenset({10, 16})


def _check_float32(model: Any, path: Path) -> None:
    """Refuse to quantize a half-precision graph (the quantizer writes an invalid one)."""
    if any(t.data_type in _HALF_TYPES for t in model.graph.initializer):
        raise ConfigurationError(
            f"Cannot quantize the ONNX file {str(path)!r} to int8: its weights are float16 or "
            "bfloat16; quantize a float32 file (such as onnx/model.onnx), or use this one "
            "without quantization"
        )


def _check_opens(built: Path, source: Path) -> None:
    """Open a freshly quantized graph once, so a broken one never lands in the cache."""
    import onnxruntime

    try:
        onnxruntime.InferenceSession(str(built), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any runtime refusal: the file cannot serve
        raise ConfigurationError(
            f"Cannot quantize the ONNX file {str(source)!r} to int8: ONNX Runtime cannot run "
            f"the result ({clip(str(exc), 200)}); pass a pre-quantized file as onnx_file, or "
            "leave quantization out"
        ) from None


#: Rows of the token embedding table compared between an ONNX file and the model's weights.
FINGERPRINT_ROWS = 16


def embedding_rows(model: Any, shape: tuple[int, int]) -> Any:
    """The first ``FINGERPRINT_ROWS`` rows of a float graph's token table (None: not readable).

    Only float32 tables held in the graph file itself are read: a quantized table, or one in
    external data, is not compared.
    """
    from onnx import TensorProto, numpy_helper

    for tensor in model.graph.initializer:
        if tuple(tensor.dims) == shape and tensor.data_type == TensorProto.FLOAT:
            if not tensor.raw_data and not tensor.float_data:
                return None
            return numpy_helper.to_array(tensor)[:FINGERPRINT_ROWS]
    return None


def differs_from_weights(graph: Any, directory: Path) -> bool:
    """Whether a float graph's token table starts otherwise than the weights in ``directory``.

    Catches another fine-tune or seed of the same shape. False where the two cannot be
    compared (a quantized or external table, no safetensors file, bfloat16 weights).
    """
    import numpy as np

    table = embedding_shape(graph)
    if table is None:
        return False
    ours, theirs = embedding_rows(graph, table), weights_rows(directory, table)
    if ours is None or theirs is None:
        return False
    return not np.allclose(ours, theirs, rtol=1e-2, atol=1e-3)


def weights_rows(directory: Path, shape: tuple[int, int]) -> Any:
    """The same rows of the token table in the model's safetensors weights (None: not found)."""
    import numpy as np
    from safetensors import safe_open

    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="np") as weights:
                for name in weights.keys():  # noqa: SIM118 - safe_open is no mapping
                    if "embed" not in name or "position" in name or "token_type" in name:
                        continue
                    table = weights.get_slice(name)
                    if tuple(table.get_shape()) == shape:
                        return np.asarray(table[:FINGERPRINT_ROWS], dtype=np.float32)
        except Exception:  # noqa: BLE001 - bfloat16 (numpy has none), a damaged file: no check
            return None
    return None
