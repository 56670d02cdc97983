"""The references the LLM rerankers are held to, re-typed: model-card code, FlagEmbedding's and
mxbai-rerank's procedures, one pair at a time, unpadded; and the texts they score.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from tests.conftest import CORPUS  # noqa: E402

QUERY = "What is the capital of France?"
LONG_QUERY = "which city is the capital of france and what river runs through it " * 12
DOCS = [
    "Paris is the capital of France.",
    "Berlin is a city in Germany. " * 40,  # over-long at small max_length
    "short",
    "Zürich, café, 東京 🙂 are not in the word list",
    "",
    *CORPUS,
]
TOL = 1e-4

QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
    'the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


_LOADED: dict[str, tuple[Any, Any]] = {}


def _load(path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = str(path)
    if key not in _LOADED:
        tokenizer = AutoTokenizer.from_pretrained(key, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(key, dtype=torch.float32).eval()
        _LOADED[key] = (tokenizer, model)
    return _LOADED[key]


def _last_logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def model_card_qwen3(
    path: Path, query: str, doc: str, instruction: str | None = None, max_length: int = 8192
) -> float:
    """The Qwen3-Reranker model card's code, for one pair."""
    import torch

    tokenizer, model = _load(path)
    instruction = QWEN3_INSTRUCTION if instruction is None else instruction
    prefix = tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)
    body = tokenizer(
        [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"],
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix) - len(suffix),
    )["input_ids"][0]
    logits = _last_logits(model, prefix + body + suffix)
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    pair = torch.stack([logits[no], logits[yes]])
    return float(torch.log_softmax(pair, dim=0)[1].exp())


MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n<|im_start|>user\n"
)
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, then "
    "provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)


def mxbai_package(
    path: Path,
    query: str,
    doc: str,
    instruction: str | None = None,
    max_length: int = 8192,
    normalize: bool = False,
    estimated_max: float = 12.0,
) -> float:
    """mxbai-rerank 0.1.6 ``MxbaiRerankV2.prepare_inputs`` + ``forward`` (+ its normalize)."""
    tokenizer, model = _load(path)
    model_max_length = model.config.max_position_embeddings

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    prefix, suffix, task, sep = ids(MXBAI_PREFIX), ids(MXBAI_SUFFIX), ids(MXBAI_TASK), ids("\n")
    predefined = len(prefix) + len(task) + len(suffix) + len(sep)
    if max_length + predefined > model_max_length:
        max_length = model_max_length - predefined
    text = f"query: {query}"
    if instruction:
        text = f"instruction: {instruction}\n{text}"
    q = tokenizer(text, add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)
    q_ids = q["input_ids"]
    doc_max = min(model_max_length - len(q_ids) - predefined, max_length)
    d_ids = tokenizer(
        f"document: {doc}", add_special_tokens=False, max_length=doc_max, truncation=True
    )["input_ids"]
    second = sep + d_ids  # prepare_for_model(q, second, truncation="only_second", max_length)
    extra = len(q_ids) + len(second) - max_length
    if extra > 0 and len(second) > extra:
        second = second[:-extra]
    logits = _last_logits(model, prefix + q_ids + second + sep + task + suffix)
    score = float(logits[ids("1")[0]] - logits[ids("0")[0]])
    return 1.0 / (1.0 + math.exp(-(score - estimated_max / 2))) if normalize else score


def _max_diff(got: list[float], expected: list[float]) -> float:
    assert len(got) == len(expected)
    return max(abs(a - b) for a, b in zip(got, expected, strict=True))


def _spread(scores: list[float]) -> None:
    """The tiny models must tell documents apart, or equal scores would prove nothing."""
    assert max(scores) - min(scores) > 1e-3, scores


def prompt_of(tokenizer: Any, tokens: int) -> str:
    """A prompt of at least ``tokens`` tokens, grown a word at a time."""
    words, text = "Is passage B an answer to query A?".split(), ""
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
        text += words[len(text.split()) % len(words)] + " "
    return text
