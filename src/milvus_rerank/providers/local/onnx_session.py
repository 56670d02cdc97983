"""One ONNX Runtime session of an encoder cross-encoder: its threads, its checks, its forward.

``OnnxScorer`` opens the file on the CPU with ``threads`` intra-op threads (by default the
CPUs this process may use, shared by the passes that run at once: ``machine_threads``). It
refuses at load a file that cannot be this model's (not ONNX, other inputs, another output
shape, another vocabulary or hidden size), and turns a padded numpy batch into one logit per
row. Sessions may run from several threads at once; a forked child opens its own (ONNX
Runtime's thread pools do not survive a fork).
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from pathlib import Path
from typing import Any

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.forks import after_fork
from milvus_rerank.providers.local.onnx_files import embedding_shape, is_quantized, read_graph

__all__ = ["INPUTS", "OnnxScorer", "machine_threads", "refusal"]

#: The inputs a cross-encoder graph may take; the first two are required.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32"}

_LIVE: weakref.WeakSet[OnnxScorer] = weakref.WeakSet()


@after_fork
def _scorers_after_fork() -> None:
    for scorer in list(_LIVE):
        scorer._after_fork()


def refusal(path: Path, why: str) -> ConfigurationError:
    """The error for an ONNX file that cannot run this model, naming it and ``why``."""
    return ConfigurationError(
        f"the ONNX file {str(path)!r} cannot run this model: {why}; use the model's own file "
        "(onnx/model.onnx), or leave onnx_file out to export one from the weights"
    )


def machine_threads(workers: int = 1) -> int:
    """Threads of one forward pass: the CPUs this process may run on, shared by ``workers``.

    ``workers`` passes run at once (the runner's ``batch_workers``); each gets an equal share
    of the CPUs (at least one), so together they fill the machine without oversubscribing
    it: on 2 cores, 2 workers of 1 thread ran 1.3 to 2.2 times the pairs/s of 2 workers of
    2 threads each (a loaded machine; the torch backend's threads are torch's own).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, workers))


class OnnxScorer:
    """An ONNX Runtime session over ``path``, checked against the model's config.

    Args:
        path: The ONNX file.
        config: The model's ``transformers`` config (vocabulary and hidden sizes).
        tokenizer: The model's tokenizer (the probe batch, and whether pairs carry
            ``token_type_ids``).
        threads: Intra-op threads of one forward pass.

    Raises:
        ConfigurationError: naming ``path``, where it is not a graph this model can run.
    """

    def __init__(
        self,
        path: Path,
        config: Any,
        tokenizer: Any,
        threads: int,
        graph: Any = None,
    ) -> None:
        self.path = path
        self.threads = threads
        self._lock = threading.Lock()
        self._session = self._open()
        if graph is None:  # the operators and tables, without external weights' data
            graph = read_graph(path)
        self.quantized = is_quantized(graph)
        self._check_tables(config, embedding_shape(graph))
        self.inputs = self._check_inputs(config, tokenizer)
        del graph
        self._probe(config, tokenizer)
        _LIVE.add(self)

    def _after_fork(self) -> None:
        """A child opens a session of its own; the parent's copy is never destroyed here.

        Destroying it joins its thread pool's threads, which a child does not have: it would
        hang forever. The copy is leaked on purpose (one more reference that is never let go).
        """
        self._lock = threading.Lock()
        if self._session is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(self._session))
        self._session = None

    def _refuse(self, why: str) -> ConfigurationError:
        return refusal(self.path, why)

    def _open(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads that spin between operations starve the other pass running at once
        # (``batch_workers``) and any neighbour on a shared machine: they sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: its warnings are not the user's business
        try:
            return ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - InvalidProtobuf, Fail, NoSuchFile...
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise self._refuse(
                f"ONNX Runtime cannot load it ({type(exc).__name__}: {text})"
            ) from None

    def _check_inputs(self, config: Any, tokenizer: Any) -> dict[str, str]:
        """The graph's inputs and their integer dtypes; unknown or missing ones refused."""
        found = {i.name: i.type for i in self._session.get_inputs()}
        unknown = sorted(set(found) - set(INPUTS))
        missing = [name for name in INPUTS[:2] if name not in found]
        if unknown or missing:
            raise self._refuse(
                f"its inputs are {sorted(found)}, a cross-encoder's are input_ids, "
                "attention_mask and maybe token_type_ids"
            )
        bad = {name: kind for name, kind in found.items() if kind not in _DTYPES}
        if bad:
            raise self._refuse(f"its inputs {bad} are not integer token ids")
        outputs = self._session.get_outputs()
        shape = list(outputs[0].shape) if outputs else []
        if len(outputs) != 1 or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise self._refuse(
                f"it has {len(outputs)} output(s), the first of shape {shape}; a reranker's "
                "graph has one, logits of shape [batch, 1]"
            )
        makes_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        if makes_types and "token_type_ids" not in found and _type_vocab(config) > 1:
            raise self._refuse(
                "it takes no token_type_ids, which this model reads to tell the query from "
                "the document"
            )
        return {name: _DTYPES[kind] for name, kind in found.items()}

    def _check_tables(self, config: Any, table: tuple[int, int] | None) -> None:
        """The embedding table fed by ``input_ids`` has the config's vocabulary and width."""
        vocab = getattr(config, "vocab_size", None)
        hidden = getattr(config, "hidden_size", None)
        if table is None or not isinstance(vocab, int) or not isinstance(hidden, int):
            return
        if table != (vocab, hidden):
            raise self._refuse(
                f"its token embedding table is {table[0]} x {table[1]}, the model's config says "
                f"{vocab} x {hidden}: it is another model's file"
            )

    def _probe(self, config: Any, tokenizer: Any) -> None:
        """Two rows of different lengths, one with the highest token id: a finite logit each."""
        import numpy as np

        ids = list(tokenizer("probe query", "a probe document")["input_ids"])
        vocab = getattr(config, "vocab_size", None)
        edge = ids[:2] + [int(vocab) - 1 if isinstance(vocab, int) else ids[1]] + ids[-1:]
        rows = [ids, edge]
        width = max(map(len, rows))
        batch = {
            "input_ids": np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64),
            "attention_mask": np.array(
                [[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=np.int64
            ),
        }
        try:
            out = self.run(batch)
        except Exception as exc:  # noqa: BLE001 - ORT's errors on shapes and indices
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise self._refuse(f"a probe batch fails ({type(exc).__name__}: {text})") from None
        if out.shape != (2,) or not np.isfinite(out).all():
            raise self._refuse(
                f"a probe batch of 2 rows gives {out.size} value(s), not 2 finite logits"
            )

    def probe_length(self, length: int, tokenizer: Any) -> None:
        """One row of ``length`` tokens (the model's ``max_length``) scores.

        A graph with a shorter position table passes every other check and then fails each
        batch that holds a long document, other callers' rows with it.
        """
        import numpy as np

        ids = list(tokenizer("probe", "probe")["input_ids"])
        filler = ids[1] if len(ids) > 2 else 0
        row = ids[:1] + [filler] * max(0, length - 2) + ids[-1:]
        batch = {
            "input_ids": np.array([row[:length]], dtype=np.int64),
            "attention_mask": np.ones((1, min(len(row), length)), dtype=np.int64),
        }
        try:
            out = self.run(batch)
        except Exception as exc:  # noqa: BLE001 - ORT's errors on shapes and indices
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise self._refuse(
                f"it cannot read an input of {length} tokens, the model's max_length "
                f"({type(exc).__name__}: {text}); pass a smaller max_length if the file is "
                "meant for shorter inputs"
            ) from None
        if not np.isfinite(out).all():
            raise self._refuse(f"an input of {length} tokens gives no finite logit")

    def run(self, batch: dict[str, Any]) -> Any:
        """One logit per row (a float32 numpy array of shape ``[rows]``) of a padded batch.

        ``batch`` holds int64 arrays ``input_ids``, ``attention_mask`` and maybe
        ``token_type_ids``; a graph that takes type ids the rows lack gets zeros (what the
        model assumes without them).
        """
        import numpy as np

        session = self._session
        if session is None:  # a forked child: a session of its own, once
            with self._lock:
                if self._session is None:
                    self._session = self._open()
                session = self._session
        feed = {}
        for name, kind in self.inputs.items():
            value = batch.get(name)
            if value is None:
                value = np.zeros_like(batch["input_ids"])
            feed[name] = value if value.dtype == kind else value.astype(kind)
        return np.asarray(session.run(None, feed)[0], dtype=np.float32).reshape(-1)


def _type_vocab(config: Any) -> int:
    value = getattr(config, "type_vocab_size", 1)
    return value if isinstance(value, int) else 1
