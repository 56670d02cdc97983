"""Exporting an encoder cross-encoder to ONNX with torch, for a model that ships no ONNX file.

The graph is the torch backend's own forward (``ClassifierForward``): where the layout allows,
the last layer runs for ``[CLS]`` only (``cls_forward.py``), so the ONNX path skips the same
work. Inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the tokenizer
makes them), dynamic in batch and length; one output, ``logits`` of shape ``[batch, 1]``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from milvus_rerank.providers.local.devices import import_torch
from milvus_rerank.providers.local.loading import Loaded
from milvus_rerank.providers.local.onnx_files import MODEL_FILE

__all__ = ["OUTPUT_NAME", "export_graph", "graph_inputs"]

#: The one output of an exported graph.
OUTPUT_NAME = "logits"
#: Parameters (in bytes) past which the weights go to an external data file (protobuf's 2 GB).
_EXTERNAL_BYTES = 1_500_000_000


def graph_inputs(tokenizer: Any) -> list[str]:
    """The inputs a graph of this tokenizer's model takes (``token_type_ids`` if it makes them)."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        names.append("token_type_ids")
    return names


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's own log lines (missing torchvision, progress) off a service's stderr."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_graph(loaded: Loaded, folder: Path) -> None:
    """Write ``loaded``'s forward (torch, float32, on the CPU) as ``folder / MODEL_FILE``.

    The sample batch has two rows of different lengths, so neither axis is specialized.
    """
    torch = import_torch()
    forward = loaded.head.forward
    names = graph_inputs(loaded.tokenizer)

    class Graph(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = loaded.model  # its parameters become the graph's initializers

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            batch = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                batch["token_type_ids"] = token_type_ids
            return forward(batch).reshape(-1, 1)

    sample = loaded.tokenizer(
        ["what is the capital of france", "which city"],
        ["paris is the capital and largest city of france", "rome"],
        padding=True,
        return_tensors="pt",
    )
    args = tuple(sample[name] for name in names)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    size = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes
        program = torch.onnx.export(
            Graph().eval(),
            args,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes={name: {0: batch, 1: length} for name in names},
            dynamo=True,
            verbose=False,
            external_data=size > _EXTERNAL_BYTES,
        )
        program.save(str(folder / MODEL_FILE), external_data=size > _EXTERNAL_BYTES)
