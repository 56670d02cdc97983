"""Shared by the examples: a reranker that works offline, and a tiny deterministic embedding.

Only the public API is used here; copy what you need into your own code.
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

from milvus_rerank import ConfigurationError, CrossEncoderReranker

DIM = 64


def offline_reranker(model: str | None, folder: Path) -> CrossEncoderReranker:
    """The cross-encoder ``model`` (default: ms-marco-MiniLM), or a tiny random stand-in.

    Without the Hugging Face hub and without a local copy, ``load()`` raises
    ``ConfigurationError``; the example then builds a tiny randomly initialized model of the
    same architecture in ``folder`` so the pipeline still runs end to end.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # an example prints rankings, not loading bars
    reranker = CrossEncoderReranker() if model is None else CrossEncoderReranker(model)
    try:
        return reranker.load()
    except ConfigurationError as exc:
        print(f"note: {str(exc).split('. ')[0]}.")
    path = CrossEncoderReranker.build_tiny_checkpoint(folder / "tiny-cross-encoder")
    print(
        f"note: continuing with a TINY RANDOMLY INITIALIZED cross-encoder built in {path}: "
        "the pipeline is real, its scores are meaningless. Pass --model PATH for real scores."
    )
    return CrossEncoderReranker(model_name=str(path)).load()


def embed(text: str) -> list[float]:
    """A normalized bag-of-words vector (hashed words): a stand-in for a real embedding model."""
    vec = [0.0] * DIM
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vec[zlib.crc32(word.encode()) % DIM] += 1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
