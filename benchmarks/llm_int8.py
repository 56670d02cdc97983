"""The LLM rerankers on CPU in int8: torch's dynamic quantization of the decoder's Linear layers.

Decoders of the real layer shapes (Qwen3-Reranker-0.6B, mxbai-rerank-base-v2 = Qwen2.5-0.5B,
bge-reranker-v2-gemma = Gemma-2B), a few layers each, random weights and the tiny tokenizers
(ours projects the last position onto the two label rows only, so the vocabulary's size does not
move the timing). Each model is scored by our reranker as loaded (fp32), with every Linear of
its decoder layers swapped for ``torch.ao.quantization``'s dynamic int8 one (the LM head, read
row by row, stays fp32), and in bfloat16 (``dtype="bfloat16"``, AMX where the CPU has it):
pairs per second side by side, and how far the scores move from fp32.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import Row, interleaved  # noqa: E402
from benchmarks.llm import QUERY, documents  # noqa: E402

BATCH = 8
PAIRS = 24
#: Layer shapes of the real checkpoints (hidden, feed-forward, heads, key/value heads, head dim).
SHAPES: dict[str, dict[str, int]] = {
    "qwen3": {"hidden": 1024, "ffn": 3072, "heads": 16, "kv": 8, "head_dim": 128, "layers": 4},
    "mxbai-v2": {"hidden": 896, "ffn": 4864, "heads": 14, "kv": 2, "head_dim": 64, "layers": 4},
    "bge-llm": {"hidden": 2048, "ffn": 16384, "heads": 8, "kv": 1, "head_dim": 256, "layers": 2},
}


def build(kind: str, root: Path) -> Path:
    """A decoder of ``kind``'s real layer shape, saved with the tiny tokenizer of its family."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from milvus_rerank.providers.local import tiny

    hf_logging.disable_progress_bar()
    builders = {
        "qwen3": tiny.build_tiny_qwen3_reranker,
        "mxbai-v2": tiny.build_tiny_mxbai_v2_reranker,
        "bge-llm": tiny.build_tiny_gemma_reranker,
    }
    path = builders[kind](root / kind)
    shape = SHAPES[kind]
    fields = AutoConfig.from_pretrained(path).to_dict()
    fields.pop("layer_types", None)  # derived from the layer count: rebuilt below
    fields.update(
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv"],
        head_dim=shape["head_dim"],
        num_hidden_layers=shape["layers"],
        initializer_range=0.05,  # spreads the random scores apart, so ranks mean something
    )
    config = AutoConfig.for_model(**fields)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(path)
    return path


def quantize_decoder(model: Any) -> None:
    """Swap every Linear of ``model``'s decoder layers for torch's dynamic int8 Linear, in place."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        quantize_dynamic(model.base_model.layers, {torch.nn.Linear}, torch.qint8, inplace=True)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (no ties expected in float scores)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def reranker(kind: str, path: Path, **options: Any) -> Any:
    from milvus_rerank import BGELLMReranker, MxbaiV2Reranker, Qwen3Reranker

    classes = {"qwen3": Qwen3Reranker, "mxbai-v2": MxbaiV2Reranker, "bge-llm": BGELLMReranker}
    return classes[kind](
        str(path), batch_size=BATCH, device="cpu", batch_across_calls=False, **options
    ).load()


def measure(kind: str, root: Path) -> dict[str, dict[str, float]]:
    """pairs/s of fp32, int8 and bf16, and each one's scores against the fp32 ones."""
    path = build(kind, root)
    docs = documents(PAIRS, seed=1)
    models = {
        "fp32": reranker(kind, path),
        "int8": reranker(kind, path),
        "bf16": reranker(kind, path, dtype="bfloat16"),
    }
    quantize_decoder(models["int8"].runner.load().model)
    scores = {name: r.score_pairs([QUERY] * PAIRS, docs) for name, r in models.items()}
    times = interleaved(
        {name: (lambda r=r: r.rerank(QUERY, docs)) for name, r in models.items()}, repeats=2
    )
    a = scores["fp32"]
    spread = max(a) - min(a) or math.inf
    return {
        name: {
            "pairs_s": PAIRS / times[name],
            "spearman": spearman(a, b),
            "drift": max(abs(x - y) for x, y in zip(a, b, strict=True)) / spread,
        }
        for name, b in scores.items()
    }


def run(kinds: tuple[str, ...] = ("qwen3", "mxbai-v2", "bge-llm")) -> list[Row]:
    """One speed row and one agreement row per family."""
    logging.getLogger("milvus_rerank").setLevel(logging.ERROR)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="milvus-rerank-bench-llm-int8-") as tmp:
        for kind in kinds:
            got = measure(kind, Path(tmp))
            shape = SHAPES[kind]
            fp32 = got["fp32"]["pairs_s"]
            for name, label in (("int8", "int8, torch.ao dynamic"), ("bf16", "bfloat16")):
                rows.append(
                    Row.report(
                        f"{kind} {label} vs fp32, pairs/s ({shape['layers']} layers of hidden "
                        f"{shape['hidden']}, {PAIRS} pairs)",
                        f"{got[name]['pairs_s']:.1f}",
                        f"{fp32:.1f} (fp32)",
                        got[name]["pairs_s"] / fp32,
                    )
                )
                rows.append(
                    Row.report(
                        f"  {kind} {name} vs fp32 scores: Spearman; largest move / fp32 spread",
                        f"{got[name]['spearman']:.4f}",
                        f"{got[name]['drift']:.3f}",
                        got[name]["spearman"],
                    )
                )
    return rows


if __name__ == "__main__":  # python -m benchmarks.llm_int8 (this table alone)
    import sys

    from benchmarks.common import table

    print(table(run(tuple(sys.argv[1:]) or ("qwen3", "mxbai-v2", "bge-llm"))))
