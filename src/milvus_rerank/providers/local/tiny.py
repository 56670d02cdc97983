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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from typing_extensions import Unpack

from milvus_rerank.providers.local.devices import import_torch
from milvus_rerank.providers.local.loading import quiet_progress

__all__ = [
    "QWEN3_RERANKER_CHAT_TEMPLATE",
    "TinyEncoderOptions",
    "TinyOptions",
    "build_tiny_bge",
    "build_tiny_cross_encoder",
    "build_tiny_gemma_reranker",
    "build_tiny_mxbai_v2_reranker",
    "build_tiny_qwen3_reranker",
    "default_vocabulary",
    "word_vector",
]

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


class TinyOptions(TypedDict, total=False):
    """What every tiny builder takes (``**options``) beside its own arguments.

    Attributes:
        texts: Extra texts whose words join the vocabulary.
        num_layers: Transformer layers (2).
        hidden_size: Hidden size (64); the decoders have heads of 32 dimensions and one
            key/value head.
        max_position_embeddings: Position table size, so the longest input the model accepts
            (each builder names its default).
        initializer_range: Std of the random weights (0.02); larger spreads the scores apart.
        seed: Torch seed (0), so the same call builds the same weights.
    """

    texts: Iterable[str] | None
    num_layers: int
    hidden_size: int
    max_position_embeddings: int
    initializer_range: float
    seed: int


class TinyEncoderOptions(TinyOptions, total=False):
    """``TinyOptions`` and what the encoder builders (BERT, XLM-RoBERTa) take besides.

    Attributes:
        num_heads: Attention heads (2).
        intermediate_size: Feed-forward size (128).
    """

    num_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class _Shape:
    """A builder's options, defaults filled in (``texts`` read once, into a list)."""

    max_position_embeddings: int
    texts: list[str]
    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 2
    intermediate_size: int = 128
    initializer_range: float = 0.02
    seed: int = 0

    def encoder_config(self) -> dict[str, Any]:
        """The config fields of a one-logit encoder of this shape (all but its vocabulary)."""
        return {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "num_labels": 1,
            "initializer_range": self.initializer_range,
        }


def _shape(
    builder: str, options: Mapping[str, Any], allowed: frozenset[str], max_position_embeddings: int
) -> _Shape:
    """``options`` of ``builder`` with their defaults; an option it does not take is a TypeError."""
    for name in options:
        if name not in allowed:
            raise TypeError(f"{builder}() got an unexpected keyword argument {name!r}")
    fields = {"max_position_embeddings": max_position_embeddings, **options}
    fields["texts"] = list(fields.get("texts") or ())
    return _Shape(**fields)


def _directory(path: str | Path) -> Path:
    """``path`` as a directory, created if missing."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save(model_class: Any, config: Any, tokenizer: Any, out: Path, seed: int) -> Path:
    """Build ``model_class(config)`` from seeded random weights; save it and ``tokenizer``."""
    torch = import_torch()
    torch.manual_seed(seed)
    with quiet_progress():  # no "Writing model shards" bar
        model_class(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_cross_encoder(
    path: str | Path, *, activation: str | None = None, **options: Unpack[TinyEncoderOptions]
) -> Path:
    """Save a BERT cross-encoder (one logit) with a word-piece tokenizer into ``path``.

    The ms-marco MiniLM shape is 6 layers, hidden size 384, 12 heads and feed-forward size 1536.

    Args:
        path: Directory to write (created if missing).
        activation: Recorded in the config like sentence-transformers does: ``"identity"``,
            ``"sigmoid"``, or None to record nothing (a one-label model then gets the sigmoid).
        **options: ``TinyEncoderOptions``; ``max_position_embeddings`` defaults to 512.
    """
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    shape = _shape("build_tiny_cross_encoder", options, TinyEncoderOptions.__optional_keys__, 512)
    out = _directory(path)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab_list = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_list += chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab_list += [c for c in _extra_chars(shape.texts) if c not in vocab_list]
    vocab_list += [w for w in _words(shape.texts) if w not in vocab_list]
    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab_list)})
    tokenizer.model_max_length = shape.max_position_embeddings
    config = BertConfig(vocab_size=len(vocab_list), **shape.encoder_config())
    if activation is not None:
        names = {
            "identity": "torch.nn.modules.linear.Identity",
            "sigmoid": "torch.nn.modules.activation.Sigmoid",
        }
        config.sentence_transformers = {"activation_fn": names[activation]}
    return _save(BertForSequenceClassification, config, tokenizer, out, shape.seed)


def build_tiny_bge(path: str | Path, **options: Unpack[TinyEncoderOptions]) -> Path:
    """Save an XLM-RoBERTa reranker (the bge-reranker-v2-m3 architecture) with a unigram tokenizer.

    Args:
        path: Directory to write (created if missing).
        **options: ``TinyEncoderOptions``; ``max_position_embeddings`` defaults to 514
            (RoBERTa reserves two positions: 514 allows 512 tokens).
    """
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaTokenizer,
    )

    shape = _shape("build_tiny_bge", options, TinyEncoderOptions.__optional_keys__, 514)
    out = _directory(path)
    pieces: list[tuple[str, float]] = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -5.0 - 0.01 * len(w)) for w in _words(shape.texts)]
    pieces += [("\u2581", -8.0)]
    pieces += [(c, -10.0) for c in string.ascii_lowercase + string.ascii_uppercase]
    pieces += [(c, -10.0) for c in string.digits + string.punctuation]
    pieces += [(c, -10.0) for c in _extra_chars(shape.texts)]
    pieces += [("<mask>", 0.0)]
    tokenizer: Any = XLMRobertaTokenizer(vocab=pieces)
    tokenizer.model_max_length = shape.max_position_embeddings - 2
    config = XLMRobertaConfig(
        vocab_size=len(pieces),
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **shape.encoder_config(),
    )
    return _save(XLMRobertaForSequenceClassification, config, tokenizer, out, shape.seed)


# -- causal LLM rerankers (Qwen3-Reranker, bge-reranker-v2-gemma, mxbai-rerank-v2) -------------

#: Words of the three LLM-reranker templates, so each is one token in the tiny vocabularies.
_LLM_WORDS = """
judge whether meets requirements based provided note only yes instruct given web retrieve
relevant passages passage prediction either contains determine providing system user
assistant think qwen created alibaba cloud helpful expert who evaluates documents match
queries carefully analyze semantic relationship between them then provide your binary
judgment relevance relevant instruction population museums known well lives live
""".split()
_QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>"]
_QWEN_PLAIN_ADDED = ["<think>", "</think>"]  # added, not special, in the real Qwen3 vocabulary
_GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]

#: A chat template rendering the Qwen3-Reranker model-card text for a ("query", "document")
#: message pair, with an optional "system" message as the instruction: what
#: sentence-transformers 6 sends for a pair (``CrossEncoder.predict(pairs, prompt=...)``). The
#: suffix is an expression because Jinja drops one trailing newline of a template's source.
QWEN3_RERANKER_CHAT_TEMPLATE = (
    "{%- set ns = namespace(instruction='Given a web search query, retrieve relevant passages "
    "that answer the query', query='', document='') -%}"
    "{%- for m in messages -%}"
    "{%- set c = m['content'] if m['content'] is string else m['content'][0]['text'] -%}"
    "{%- if m['role'] == 'system' -%}{%- set ns.instruction = c -%}"
    "{%- elif m['role'] == 'query' -%}{%- set ns.query = c -%}"
    "{%- elif m['role'] == 'document' -%}{%- set ns.document = c -%}{%- endif -%}"
    "{%- endfor -%}"
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: {{ ns.instruction }}\n<Query>: {{ ns.query }}\n"
    "<Document>: {{ ns.document }}"
    "{{ '<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}"
)


def _llm_words(texts: Iterable[str] | None) -> list[str]:
    """Every word in lower, Capitalized and UPPER form ("Judge", "Query", "Yes" stay whole)."""
    words = set(_WORDS) | set(_LLM_WORDS)
    for text in texts or ():
        words.update(re.findall(r"[A-Za-z0-9]+", text))
    return sorted({form for w in words for form in (w.lower(), w.capitalize(), w.upper())})


def _bpe_corpus(words: list[str]) -> list[str]:
    """Each word alone and after a space, several times, so the BPE learns it as one token."""
    lines: list[str] = []
    for w in words:
        lines += [w, " " + w, w + "\n", " " + w + ":"] * 4
    lines += ["0", "1", "\n", "\n\n", ": ", "<", ">"] * 20
    return lines


def _trained(tok: Any, texts: Iterable[str] | None, alphabet: list[str]) -> tuple[Any, Any]:
    import json

    from tokenizers import trainers

    trainer = trainers.BpeTrainer(
        vocab_size=20000, min_frequency=2, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_bpe_corpus(_llm_words(texts)), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    ordered = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    return ordered, merges


def _qwen_tokenizer(texts: Iterable[str] | None, max_len: int) -> Any:
    """A byte-level BPE with Qwen2's pre-tokenizer, as a transformers ``Qwen2Tokenizer``."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    ordered, merges = _trained(tok, texts, pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|endoftext|>": 0}
    for t in ordered:
        vocab.setdefault(t, len(vocab))
    qwen: Any = Qwen2Tokenizer(vocab=vocab, merges=merges)  # unk/eos/pad <|endoftext|>, no bos
    qwen.add_tokens([AddedToken(t, special=True, normalized=False) for t in _QWEN_SPECIALS])
    qwen.add_tokens([AddedToken(t, special=False, normalized=False) for t in _QWEN_PLAIN_ADDED])
    qwen.model_max_length = max_len
    missing = [t for t in ("yes", "no", "0", "1") if t not in qwen.get_vocab()]
    if missing:  # pragma: no cover - the corpus always holds them
        raise RuntimeError(f"tiny Qwen vocabulary lacks {missing}")
    return qwen


def _gemma_tokenizer(texts: Iterable[str] | None, max_len: int) -> Any:
    """A Gemma BPE: spaces become '\u2581', byte fallback ``<0xNN>``, as a ``GemmaTokenizer``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GemmaTokenizer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    # Train per '\u2581'-word so no merge spans two words; Gemma itself has no pre-tokenizer.
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    alphabet = list(string.ascii_letters + string.digits + string.punctuation) + ["\u2581", "\n"]
    ordered, merges = _trained(tok, texts, alphabet)
    vocab: dict[str, int] = {t: i for i, t in enumerate(_GEMMA_SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in ordered:
        vocab.setdefault(t, len(vocab))
    gemma: Any = GemmaTokenizer(vocab=vocab, merges=merges)
    gemma.model_max_length = max_len
    return gemma


def _save_causal(
    model_class: Any,
    config_class: Any,
    tokenizer: Any,
    out: Path,
    shape: _Shape,
    vocab_size: int | None,
    **architecture: Any,
) -> Path:
    """Build and save a tiny decoder with heads of 32 dimensions and one key/value head."""
    config = config_class(
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.hidden_size * 2,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.hidden_size // 32,
        num_key_value_heads=1,
        max_position_embeddings=shape.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=shape.initializer_range,
        **architecture,
    )
    return _save(model_class, config, tokenizer, out, shape.seed)


def _save_qwen(
    model_class: Any,
    config_class: Any,
    path: str | Path,
    shape: _Shape,
    chat_template: str | None = None,
    **causal: Any,
) -> Path:
    """A tiny Qwen-family decoder (tied embeddings, no bos, ``<|im_end|>`` ends a turn)."""
    out = _directory(path)
    tok = _qwen_tokenizer(shape.texts, shape.max_position_embeddings)
    if chat_template is not None:
        tok.chat_template = chat_template
    return _save_causal(
        model_class,
        config_class,
        tok,
        out,
        shape,
        tie_word_embeddings=True,  # as Qwen3-Reranker-0.6B and Qwen2.5-0.5B (mxbai base)
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        **causal,
    )


def build_tiny_qwen3_reranker(
    path: str | Path,
    *,
    chat_template: str | None = None,
    vocab_size: int | None = None,
    **options: Unpack[TinyOptions],
) -> Path:
    """Save a Qwen3ForCausalLM (the Qwen3-Reranker architecture) with a ``Qwen2Tokenizer``.

    Args:
        path: Directory to write (created if missing).
        chat_template: A chat template to save (``QWEN3_RERANKER_CHAT_TEMPLATE`` makes
            sentence-transformers render the model-card text); None saves none.
        vocab_size: Rows of the embedding and LM head (151,936 for the real vocabulary's
            shape); None: the tiny tokenizer's size.
        **options: ``TinyOptions``; ``max_position_embeddings`` defaults to 1024.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    shape = _shape("build_tiny_qwen3_reranker", options, TinyOptions.__optional_keys__, 1024)
    return _save_qwen(
        Qwen3ForCausalLM,
        Qwen3Config,
        path,
        shape,
        chat_template,
        vocab_size=vocab_size,
        head_dim=32,
    )


def build_tiny_gemma_reranker(
    path: str | Path, *, vocab_size: int | None = None, **options: Unpack[TinyOptions]
) -> Path:
    """Save a GemmaForCausalLM (the bge-reranker-v2-gemma architecture) with a ``GemmaTokenizer``.

    Args:
        path: Directory to write (created if missing).
        vocab_size: Rows of the embedding and LM head (256,000 for the real shape); None: the
            tiny tokenizer's size.
        **options: ``TinyOptions``; ``max_position_embeddings`` defaults to 1024.
    """
    from transformers import GemmaConfig, GemmaForCausalLM

    shape = _shape("build_tiny_gemma_reranker", options, TinyOptions.__optional_keys__, 1024)
    out = _directory(path)
    tok = _gemma_tokenizer(shape.texts, shape.max_position_embeddings)
    return _save_causal(
        GemmaForCausalLM,
        GemmaConfig,
        tok,
        out,
        shape,
        vocab_size,
        head_dim=32,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def build_tiny_mxbai_v2_reranker(path: str | Path, **options: Unpack[TinyOptions]) -> Path:
    """Save a Qwen2ForCausalLM (the mxbai-rerank-*-v2 architecture) with a ``Qwen2Tokenizer``.

    Args:
        path: Directory to write (created if missing).
        **options: ``TinyOptions``; ``max_position_embeddings`` defaults to 1024.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = _shape("build_tiny_mxbai_v2_reranker", options, TinyOptions.__optional_keys__, 1024)
    return _save_qwen(Qwen2ForCausalLM, Qwen2Config, path, shape, vocab_size=None)


def word_vector(text: str, dim: int = 64) -> list[float]:
    """A normalized bag-of-words vector (crc32 buckets): an offline embedding stand-in.

    Deterministic, and close for texts that share words; use a real embedding model in earnest.
    """
    vec = [0.0] * dim
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vec[zlib.crc32(word.encode()) % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
