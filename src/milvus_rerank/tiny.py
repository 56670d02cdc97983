"""Tiny, randomly initialized reranker checkpoints built on the spot.

They load through the same ``from_pretrained`` path as real weights, so the demo, the tests
and the benchmarks exercise the real code where the Hugging Face hub cannot be reached.
Their scores mean nothing: they are random models, labelled as such wherever they are used.
``word_vector`` is the matching stand-in for an embedding model (examples and tests).
"""

from __future__ import annotations

import math
import re
import string
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .providers._local import _import_torch

__all__ = ["build_tiny_bge", "build_tiny_cross_encoder", "default_vocabulary", "word_vector"]

_WORDS = """
the of and to in a is that for it as was with be by on not he this are or his from at which
but have an they you were her she there been one all we their has would when if so no what
can more out who said about up into time them some could other than then these two may first
do any like my now over such our man me even most made after also did many before must
through back years where much your way well down should because each just those people how
too little state good very make world still own see men work long get here between both life
being under never day same another know while last might us great old year off come since
against go came right used take three intelligence artificial event marked official birth
discipline conference dartmouth alan turing machine learning neural network milvus vector
database search retrieval rerank query document model paris france capital berlin germany
city river language python data science research history computer program question answer
""".split()


def default_vocabulary() -> list[str]:
    """Whole words the tiny tokenizers know; anything else splits into characters."""
    return sorted(set(_WORDS))


def _words(texts: Iterable[str] | None) -> list[str]:
    words = set(default_vocabulary())
    for text in texts or ():
        words.update(re.findall(r"[a-z0-9]+", text.lower()))
    return sorted(words)


def _extra_chars(texts: Iterable[str] | None) -> list[str]:
    """Characters of ``texts`` outside ASCII, so the tiny vocabularies cover them."""
    return sorted({c for text in texts or () for c in text if ord(c) > 127 and not c.isspace()})


def build_tiny_cross_encoder(
    path: str | Path,
    *,
    texts: Iterable[str] | None = None,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    activation: str | None = None,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """Save a BERT cross-encoder (one logit) with a word-piece tokenizer into ``path``.

    Args:
        path: Directory to write (created if missing).
        texts: Extra texts whose words join the vocabulary.
        num_layers: Transformer layers (6 for the ms-marco MiniLM shape).
        hidden_size: Hidden size (384 for the MiniLM shape).
        num_heads: Attention heads (12 for the MiniLM shape).
        intermediate_size: Feed-forward size (1536 for the MiniLM shape).
        max_position_embeddings: Longest input the model accepts.
        activation: Recorded in the config like sentence-transformers does: ``"identity"``,
            ``"sigmoid"``, or None to record nothing (a one-label model then gets the sigmoid).
        initializer_range: Std of the random weights; larger spreads the scores apart.
        seed: Torch seed, so the same call builds the same weights.
    """
    torch = _import_torch()
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab_list = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    texts = list(texts or ())
    vocab_list += chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab_list += [c for c in _extra_chars(texts) if c not in vocab_list]
    vocab_list += [w for w in _words(texts) if w not in vocab_list]
    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab_list)})
    tokenizer.model_max_length = max_position_embeddings
    config = BertConfig(
        vocab_size=len(vocab_list),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        num_labels=1,
        initializer_range=initializer_range,
    )
    if activation is not None:
        names = {
            "identity": "torch.nn.modules.linear.Identity",
            "sigmoid": "torch.nn.modules.activation.Sigmoid",
        }
        config.sentence_transformers = {"activation_fn": names[activation]}
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_bge(
    path: str | Path,
    *,
    texts: Iterable[str] | None = None,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 514,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """Save an XLM-RoBERTa reranker (the bge-reranker-v2-m3 architecture) with a unigram tokenizer.

    Args:
        path: Directory to write (created if missing).
        texts: Extra texts whose words join the vocabulary.
        num_layers: Transformer layers.
        hidden_size: Hidden size.
        num_heads: Attention heads.
        intermediate_size: Feed-forward size.
        max_position_embeddings: Position table size (RoBERTa reserves two: 514 allows 512 tokens).
        initializer_range: Std of the random weights; larger spreads the scores apart.
        seed: Torch seed, so the same call builds the same weights.
    """
    torch = _import_torch()
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaTokenizer,
    )

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(texts or ())
    pieces: list[tuple[str, float]] = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -5.0 - 0.01 * len(w)) for w in _words(texts)]
    pieces += [("\u2581", -8.0)]
    pieces += [(c, -10.0) for c in string.ascii_lowercase + string.ascii_uppercase]
    pieces += [(c, -10.0) for c in string.digits + string.punctuation]
    pieces += [(c, -10.0) for c in _extra_chars(texts)]
    pieces += [("<mask>", 0.0)]
    tokenizer: Any = XLMRobertaTokenizer(vocab=pieces)
    tokenizer.model_max_length = max_position_embeddings - 2
    config = XLMRobertaConfig(
        vocab_size=len(pieces),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def word_vector(text: str, dim: int = 64) -> list[float]:
    """A normalized bag-of-words vector (crc32 buckets): an offline embedding stand-in.

    Deterministic, and close for texts that share words; use a real embedding model in earnest.
    """
    vec = [0.0] * dim
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vec[zlib.crc32(word.encode()) % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
