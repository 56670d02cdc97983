"""Exporting an encoder cross-encoder to ONNX with torch, for a model that ships no ONNX file.

The full Hugging Face model goes through torch's legacy (TorchScript) exporter with eager
attention: measured, that graph runs faster on ONNX Runtime than the dynamo export of the
``[CLS]``-only forward, in float32 and int8. Inputs ``input_ids``, ``attention_mask`` (and
``token_type_ids`` where the tokenizer makes them), dynamic in batch and length; one output,
``logits`` of shape ``[batch, num_labels]`` (``[batch, 1]`` for a reranker).
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
#: The opset the legacy exporter writes.
_OPSET = 17


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
    """Write ``loaded``'s full model (torch, float32, on the CPU) as ``folder / MODEL_FILE``.

    The legacy exporter (``dynamo=False``, opset 17) traces the model's own forward with eager
    attention. The sample batch has two rows of different lengths, so neither axis is
    specialized.
    """
    torch = import_torch()
    model = loaded.model
    names = graph_inputs(loaded.tokenizer)

    class Graph(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # its parameters become the graph's initializers

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(names, inputs, strict=True)), return_dict=True).logits

    sample = loaded.tokenizer(
        ["what is the capital of france", "which city"],
        ["paris is the capital and largest city of france", "rome"],
        padding=True,
        return_tensors="pt",
    )
    args = tuple(sample[name] for name in names)
    axes = {name: {0: "batch", 1: "length"} for name in names}
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    attention = model.config._attn_implementation
    model.set_attn_implementation("eager")  # sdpa traces to a slower graph on ONNX Runtime
    try:
        with warnings.catch_warnings(), _quiet_exporter(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes
            torch.onnx.export(
                Graph().eval(),
                args,
                str(folder / MODEL_FILE),
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
                opset_version=_OPSET,
                dynamo=False,
                external_data=size > _EXTERNAL_BYTES,
            )
    finally:
        model.set_attn_implementation(attention)
