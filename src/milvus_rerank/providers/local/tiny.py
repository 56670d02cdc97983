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

from milvus_rerank.providers.local.devices import import_torch
from milvus_rerank.providers.local.loading import quiet_progress

__all__ = [
    "QWEN3_RERANKER_CHAT_TEMPLATE",
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
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    out = _directory(path)
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
    return _save(BertForSequenceClassification, config, tokenizer, out, seed)


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
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaTokenizer,
    )

    out = _directory(path)
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
    return _save(XLMRobertaForSequenceClassification, config, tokenizer, out, seed)


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
    *,
    num_layers: int,
    hidden_size: int,
    vocab_size: int | None,
    max_position_embeddings: int,
    initializer_range: float,
    seed: int,
    **architecture: Any,
) -> Path:
    """Build and save a tiny decoder with heads of 32 dimensions and one key/value head."""
    config = config_class(
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 32,
        num_key_value_heads=1,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
        **architecture,
    )
    return _save(model_class, config, tokenizer, out, seed)


def _save_qwen(
    model_class: Any,
    config_class: Any,
    path: str | Path,
    texts: Iterable[str] | None,
    chat_template: str | None,
    max_position_embeddings: int,
    **causal: Any,
) -> Path:
    """A tiny Qwen-family decoder (tied embeddings, no bos, ``<|im_end|>`` ends a turn)."""
    out = _directory(path)
    tok = _qwen_tokenizer(texts, max_position_embeddings)
    if chat_template is not None:
        tok.chat_template = chat_template
    return _save_causal(
        model_class,
        config_class,
        tok,
        out,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,  # as Qwen3-Reranker-0.6B and Qwen2.5-0.5B (mxbai base)
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        **causal,
    )


def build_tiny_qwen3_reranker(
    path: str | Path,
    *,
    texts: Iterable[str] | None = None,
    chat_template: str | None = None,
    num_layers: int = 2,
    hidden_size: int = 64,
    vocab_size: int | None = None,
    max_position_embeddings: int = 1024,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """Save a Qwen3ForCausalLM (the Qwen3-Reranker architecture) with a ``Qwen2Tokenizer``.

    Args:
        path: Directory to write (created if missing).
        texts: Extra texts whose words join the vocabulary.
        chat_template: A chat template to save (``QWEN3_RERANKER_CHAT_TEMPLATE`` makes
            sentence-transformers render the model-card text); None saves none.
        num_layers: Decoder layers.
        hidden_size: Hidden size (heads of 32 dimensions, one key/value head).
        vocab_size: Rows of the embedding and LM head (151,936 for the real vocabulary's
            shape); None: the tiny tokenizer's size.
        max_position_embeddings: Longest input the model accepts.
        initializer_range: Std of the random weights; larger spreads the scores apart.
        seed: Torch seed, so the same call builds the same weights.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return _save_qwen(
        Qwen3ForCausalLM,
        Qwen3Config,
        path,
        texts,
        chat_template,
        max_position_embeddings,
        num_layers=num_layers,
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        initializer_range=initializer_range,
        seed=seed,
        head_dim=32,
    )


def build_tiny_gemma_reranker(
    path: str | Path,
    *,
    texts: Iterable[str] | None = None,
    num_layers: int = 2,
    hidden_size: int = 64,
    vocab_size: int | None = None,
    max_position_embeddings: int = 1024,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """Save a GemmaForCausalLM (the bge-reranker-v2-gemma architecture) with a ``GemmaTokenizer``.

    Args:
        path: Directory to write (created if missing).
        texts: Extra texts whose words join the vocabulary.
        num_layers: Decoder layers.
        hidden_size: Hidden size (heads of 32 dimensions, one key/value head).
        vocab_size: Rows of the embedding and LM head (256,000 for the real shape); None: the
            tiny tokenizer's size.
        max_position_embeddings: Longest input the model accepts.
        initializer_range: Std of the random weights; larger spreads the scores apart.
        seed: Torch seed, so the same call builds the same weights.
    """
    from transformers import GemmaConfig, GemmaForCausalLM

    out = _directory(path)
    tok = _gemma_tokenizer(texts, max_position_embeddings)
    return _save_causal(
        GemmaForCausalLM,
        GemmaConfig,
        tok,
        out,
        num_layers=num_layers,
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        seed=seed,
        head_dim=32,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def build_tiny_mxbai_v2_reranker(
    path: str | Path,
    *,
    texts: Iterable[str] | None = None,
    num_layers: int = 2,
    hidden_size: int = 64,
    max_position_embeddings: int = 1024,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """Save a Qwen2ForCausalLM (the mxbai-rerank-*-v2 architecture) with a ``Qwen2Tokenizer``.

    Args:
        path: Directory to write (created if missing).
        texts: Extra texts whose words join the vocabulary.
        num_layers: Decoder layers.
        hidden_size: Hidden size (heads of 32 dimensions, one key/value head).
        max_position_embeddings: Longest input the model accepts.
        initializer_range: Std of the random weights; larger spreads the scores apart.
        seed: Torch seed, so the same call builds the same weights.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _save_qwen(
        Qwen2ForCausalLM,
        Qwen2Config,
        path,
        texts,
        None,
        max_position_embeddings,
        num_layers=num_layers,
        hidden_size=hidden_size,
        vocab_size=None,
        initializer_range=initializer_range,
        seed=seed,
    )


def word_vector(text: str, dim: int = 64) -> list[float]:
    """A normalized bag-of-words vector (crc32 buckets): an offline embedding stand-in.

    Deterministic, and close for texts that share words; use a real embedding model in earnest.
    """
    vec = [0.0] * dim
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vec[zlib.crc32(word.encode()) % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
