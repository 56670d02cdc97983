"""What the ONNX benchmarks share: checkpoints of the real shapes, a bare ONNX Runtime loop, peers.

The ONNX files are ours (``backend="onnx"`` exports and quantizes them into its cache); the
peers are handed those very files. FlashRank reads a folder of its own layout:
``flashrank_cache`` lays one out around any ONNX file and the model's tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUERY = "what event in 1956 marked the birth of artificial intelligence as a discipline"
#: The shape of cross-encoder/ms-marco-MiniLM-L12-v2 (the vocabulary too: BERT's 30,522 rows).
MINILM_L12 = {"num_layers": 12, "hidden_size": 384, "num_heads": 12, "intermediate_size": 1536}
BERT_VOCAB = 30_522
#: The shape of BAAI/bge-reranker-base (XLM-RoBERTa base); the tiny vocabulary keeps it small.
XLMR_BASE = {"num_layers": 12, "hidden_size": 768, "num_heads": 12, "intermediate_size": 3072}
#: FlashRank's name for a MiniLM-L12 cross-encoder, and the file name it looks for.
FLASHRANK_MODEL = "ms-marco-MiniLM-L-12-v2"
#: Where ours caches exported and quantized graphs (the benches point it at a temporary folder).
CACHE_ENV = "MILVUS_RERANK_CACHE"


def documents(count: int, seed: int = 0, low: int = 16, high: int = 256) -> list[str]:
    """Documents of ``low`` to ``high`` words of the tiny vocabulary (one token per word)."""
    from milvus_rerank.providers.local.tiny import default_vocabulary

    words = default_vocabulary()
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(low, high))) for _ in range(count)
    ]


def build_minilm_l12(path: Path, vocab_size: int = BERT_VOCAB) -> Path:
    """A random cross-encoder of the ms-marco-MiniLM-L12-v2 shape, 30,522 vocabulary rows.

    The tiny word-piece vocabulary is padded with ``[unusedN]`` entries to the model's rows (as
    BERT's own holds ``[unused0]``...), so the tokenizer matches the embedding table.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertTokenizer
    from transformers.utils import logging as hf_logging

    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

    hf_logging.disable_progress_bar()
    build_tiny_cross_encoder(path, activation="identity", **MINILM_L12)
    vocab = AutoTokenizer.from_pretrained(path).get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    tokens += [f"[unused{i}]" for i in range(vocab_size - len(tokens))]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(tokens)})
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(path)
    config = BertConfig.from_pretrained(path)
    config.vocab_size = vocab_size
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(path)
    return path


@contextlib.contextmanager
def temporary_cache(folder: Path) -> Iterator[Path]:
    """Point ours' ONNX cache (``MILVUS_RERANK_CACHE``) at ``folder`` for the block."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            del os.environ[CACHE_ENV]
        else:
            os.environ[CACHE_ENV] = before


def session(path: Path, threads: int | None = None) -> Any:
    """A CPU ``InferenceSession`` over ``path`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def plain_loop(torch_reranker: Any, onnx_file: Path, docs: list[str]) -> Callable[[], None]:
    """``session.run`` over our pre-tokenized, length-sorted batches: ONNX Runtime alone."""
    import numpy as np
    import torch

    runner = torch_reranker.runner
    features = runner.encode_pairs(QUERY, docs)
    sess = session(onnx_file, torch.get_num_threads())
    wanted = {i.name for i in sess.get_inputs()}
    batches = []
    for rows in runner.schedule(features):
        batch = runner.collate([features[i] for i in rows])
        batches.append(
            {k: np.asarray(v.numpy(), dtype=np.int64) for k, v in batch.items() if k in wanted}
        )

    def run() -> None:
        for batch in batches:
            sess.run(None, batch)

    return run


def flashrank_cache(model_dir: Path, onnx_file: Path, cache: Path) -> Path:
    """Lay ``onnx_file`` and ``model_dir``'s tokenizer out as FlashRank's cached MiniLM-L12."""
    from flashrank.Config import model_file_map

    folder = cache / FLASHRANK_MODEL
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_file, folder / model_file_map[FLASHRANK_MODEL])
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (model_dir / name).exists():
            shutil.copyfile(model_dir / name, folder / name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    specials = {k: config[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    model = json.loads((folder / "config.json").read_text())
    model.setdefault("pad_token_id", 0)
    (folder / "config.json").write_text(json.dumps(model))
    return cache


def flashrank_ranker(cache: Path) -> Any:
    """FlashRank's ``Ranker`` over a cache that ``flashrank_cache`` laid out (no download)."""
    from flashrank import Ranker

    return Ranker(model_name=FLASHRANK_MODEL, cache_dir=str(cache), log_level="WARNING")


def flashrank_rerank(ranker: Any, docs: list[str]) -> Any:
    """One ``Ranker.rerank`` call over ``docs``, as its README shows it."""
    from flashrank import RerankRequest

    passages = [{"id": i, "text": d} for i, d in enumerate(docs)]
    return ranker.rerank(RerankRequest(query=QUERY, passages=passages))


def why_not_sentence_transformers_onnx() -> str | None:
    """None where sentence-transformers' ``backend="onnx"`` can run here, else why not."""
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError:
        return (
            "needs optimum-onnx (optimum.onnxruntime), whose releases (0.1.0) require "
            "transformers<4.58, and transformers is pinned at 5.x"
        )
    return None


def why_not_fastembed() -> str | None:
    """None where fastembed's ``TextCrossEncoder`` can run here, else why not."""
    try:
        import fastembed  # noqa: F401
    except ImportError:
        return "fastembed 0.9.1 requires huggingface-hub<2.0, which is pinned at 2.x"
    return None
