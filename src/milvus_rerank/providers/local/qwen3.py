"""Qwen3-Reranker (``Qwen/Qwen3-Reranker-0.6B``/4B/8B), scored like its model card."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from typing_extensions import Unpack

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local.causal import (
    FEW_TOKENS,
    CausalFamily,
    CausalReranker,
    check_instruction,
    text_tokens,
)
from milvus_rerank.providers.local.family import Located, ModelSource, Rows
from milvus_rerank.providers.local.options import LocalOptions, check_query_max_length

__all__ = ["QWEN3_DEFAULT_INSTRUCTION", "Qwen3Family", "Qwen3Reranker"]

logger = logging.getLogger("milvus_rerank.providers.qwen3")  # the name users configure

QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
#: The model card's instruction when none is given.
QWEN3_DEFAULT_INSTRUCTION = (
    "Given a web search query, retrieve relevant passages that answer the query"
)
#: The model card's ``max_length``.
QWEN3_MAX_LENGTH = 8192


class Qwen3Family(CausalFamily):
    r"""The model card's prompt and P(yes) = softmax over the ``no``/``yes`` logits.

    Each pair is ``prefix + body + suffix`` with the body
    ``<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}`` cut (from the
    right) to ``max_length`` less the prefix and suffix, so the chat frame always survives.
    The document is what is cut first: a query (or instruction) that fills the body leaves
    none of it, as in the model card, and is logged; ``query_max_length`` (off by default)
    cuts the query to that many tokens first, so documents keep the rest of the window.
    """

    model_types: ClassVar[frozenset[str]] = frozenset({"qwen3"})

    def __init__(
        self, instruction: str | None = None, *, query_max_length: int | None = None
    ) -> None:
        super().__init__(instruction)
        self.query_max_length = check_query_max_length(query_max_length)

    def default_max_length(self, tokenizer: Any, config: Any) -> int:
        """The model card's 8192 (capped at the position table by the runner)."""
        return QWEN3_MAX_LENGTH

    def query_tokens_read(self, max_length: int) -> int | None:
        """The body keeps its head, fewer than ``max_length`` tokens (``query_max_length``)."""
        qml = self.query_max_length
        return max_length if qml is None else min(qml, max_length)

    def body_limit(self, tokenizer: Any, max_length: int) -> int:
        """Tokens left for the body once the prefix and suffix are in."""
        frame = self.ids(tokenizer, QWEN3_PREFIX) + self.ids(tokenizer, QWEN3_SUFFIX)
        return max_length - len(frame)

    def check_max_length(self, tokenizer: Any, max_length: int) -> None:
        """The frame and the instruction must leave the query (and document) a token at least.

        Checked at load, when a view is made of a loaded reranker, and before each encoding.
        """
        frame = -self.body_limit(tokenizer, 0)
        instruction = f"<Instruct>: {self._instruction()}\n<Query>: "
        head = len(self.ids(tokenizer, instruction, user=True))
        if max_length <= frame + head:
            least = frame + head + 1
            positions = self._model.get("positions")
            fix = (
                f"that is more than the model's position table holds ({positions} tokens): "
                "shorten the instruction"
                if positions is not None and least > positions
                else f"use max_length of at least {least}, or a shorter instruction"
            )
            raise ConfigurationError(
                f"max_length={max_length} leaves no room for a query and a document: the "
                f"Qwen3-Reranker prompt frame alone takes {frame} tokens and the instruction "
                f"(with its <Instruct>/<Query> labels) {head}; {fix}"
            )

    def encode(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> Rows:
        """``prefix + tokenizer(body, truncation, max_length - frame) + suffix``, per pair."""
        return self._encode(tokenizer, queries, documents, max_length)[0]

    def _encode(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> tuple[Rows, list[str]]:
        """The rows, and the bodies they were tokenized from (queries cut to their limit)."""
        self.check_max_length(tokenizer, max_length)
        bodies = self._bodies(self._cut_queries(tokenizer, queries), documents)
        limit = self.body_limit(tokenizer, max_length)
        encoded = tokenizer(
            bodies,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            return_offsets_mapping=True,
            max_length=limit,
            split_special_tokens=self.split_special_tokens,
        )
        for body, document, offsets in zip(
            bodies, documents, encoded["offset_mapping"], strict=True
        ):
            if len(offsets) >= limit and offsets[-1][1] < len(body) and document.strip():
                at, end = text_tokens(offsets, len(body) - len(document))
                if end - at < FEW_TOKENS:
                    self._warn_squeezed(min(at, limit), end - at, max_length)
        prefix, suffix = self.ids(tokenizer, QWEN3_PREFIX), self.ids(tokenizer, QWEN3_SUFFIX)
        rows = [{"input_ids": prefix + list(body) + suffix} for body in encoded["input_ids"]]
        return rows, bodies

    def _warn_squeezed(self, before: int, kept: int, max_length: int) -> None:
        hint = "lower query_max_length" if self.query_max_length else "set query_max_length"
        self.warn_once(
            logger,
            "document squeezed",
            "Qwen3-Reranker: the instruction and query took %d tokens of the body "
            "(max_length=%d), leaving a document %d token(s): such documents score alike, as "
            "in the model card, which cuts the document first; %s (or raise max_length) to "
            "keep room for documents",
            before,
            max_length,
            kept,
            hint,
        )

    def _cut_queries(self, tokenizer: Any, queries: Sequence[str]) -> list[str]:
        """Each query cut at the end of its ``query_max_length``-th token (None: whole)."""
        limit = self.query_max_length
        if limit is None:
            return list(queries)
        unique = list(dict.fromkeys(queries))
        offsets = self.tokenize_whole(tokenizer, unique, offsets=True)["offset_mapping"]
        cut = {
            q: q if len(o) <= limit else q[: o[limit - 1][1]]
            for q, o in zip(unique, offsets, strict=True)
        }
        return [cut[q] for q in queries]

    def locate(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> list[Located]:
        """``encode``'s rows; a body cut at its limit gets its document located in it.

        The cut body is tokenized again whole, with offsets: the document's tokens are those
        ending past its first character (the space before it may ride on its first token),
        taken from the body's own tokens, so the windows read the document as the body does.
        """
        rows, bodies = self._encode(tokenizer, queries, documents, max_length)
        limit = self.body_limit(tokenizer, max_length)
        frame = len(self.ids(tokenizer, QWEN3_PREFIX))
        suffix = len(self.ids(tokenizer, QWEN3_SUFFIX))
        located = [Located(row) for row in rows]
        cut = [i for i, row in enumerate(rows) if len(row["input_ids"]) - frame - suffix >= limit]
        if not cut:
            return located
        whole = tokenizer(
            [bodies[i] for i in cut],
            return_offsets_mapping=True,
            return_attention_mask=False,
            verbose=False,
            split_special_tokens=self.split_special_tokens,
        )
        for i, ids, offsets in zip(cut, whole["input_ids"], whole["offset_mapping"], strict=True):
            body = bodies[i]
            at, end = text_tokens(offsets, len(body) - len(documents[i]))
            kept = min(limit, end) - at
            if kept < end - at:  # a body exactly at its limit may have lost nothing
                located[i] = Located(rows[i], ids[at:end], frame + at, frame + at + kept)
        return located

    def _instruction(self) -> str:
        return QWEN3_DEFAULT_INSTRUCTION if self.instruction is None else self.instruction

    def _bodies(self, queries: Sequence[str], documents: Sequence[str]) -> list[str]:
        instruction = self._instruction()
        return [
            f"<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}"
            for q, d in zip(queries, documents, strict=True)
        ]

    def label_ids(self, tokenizer: Any, source: ModelSource) -> list[int]:
        """``no`` and ``yes``, each a token of the vocabulary."""
        return [_single_token(tokenizer, t, source) for t in ("no", "yes")]

    def score_labels(self, logits: Any) -> Any:
        """sigmoid(logit(yes) - logit(no)), the softmax's P(yes)."""
        import torch

        return torch.log_softmax(logits, dim=-1)[:, 1].exp()

    def describe(self) -> dict[str, Any]:
        """Family options for the repr."""
        fields = (
            {} if self.query_max_length is None else {"query_max_length": self.query_max_length}
        )
        return {**fields, **super().describe()}


def _single_token(tokenizer: Any, token: str, source: ModelSource) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ConfigurationError(
            f"model {source.model_name!r} has no {token!r} token; it is not a Qwen3-Reranker"
        )
    return int(token_id)


class Qwen3Reranker(CausalReranker):
    """Qwen3-Reranker scored exactly like its model card: P(yes) in [0, 1].

    Args:
        model_name: Hugging Face hub name or local directory.
        instruction: What relevance means for this task (None: the model card's web-search
            instruction; ``""`` leaves ``<Instruct>:`` empty, as the card's code does).
            ``with_instruction`` scores with another one on the same model.
        query_max_length: Cut each query to this many tokens first, so a long query leaves
            documents the rest of the window (None: the model card's rule, where the body is
            cut from its end and a query filling it leaves no document, which is logged).
        **options: The options of every local reranker (``LocalOptions``): device, dtype
            (bf16 on CUDA by default), use_fp16, batch_size, max_length (default 8192),
            max_tokens_per_batch, trust_remote_code, revision, cache_dir, local_files_only,
            long_documents ("max_passage": a long document scores as its best window, the
            prompt around every window), passage_overlap, max_passages,
            split_special_tokens (``<|im_end|>`` in a document is text, not a chat turn).

    Example:
        >>> reranker = Qwen3Reranker(instruction="Find code that answers the question")
        >>> legal = reranker.with_instruction("Find the statute the question is about")
    """

    provider: ClassVar[str] = "qwen3"
    default_model: ClassVar[str] = "Qwen/Qwen3-Reranker-0.6B"
    tiny_builder: ClassVar[str | None] = "build_tiny_qwen3_reranker"
    family: Qwen3Family

    def __init__(
        self,
        model_name: str = default_model,
        *,
        instruction: str | None = None,
        query_max_length: int | None = None,
        **options: Unpack[LocalOptions],
    ) -> None:
        family = Qwen3Family(instruction, query_max_length=query_max_length)
        super().__init__(model_name, family, **options)

    @staticmethod
    def vllm_templates(instruction: str | None = None) -> dict[str, str]:
        r"""``VLLMReranker`` options that send this model card's prompt to a vLLM server.

        vLLM serves a Qwen3-Reranker as a classifier of ``yes`` against ``no`` (see
        ``docs/llm_rerankers.md``) and scores the concatenated query and document as sent, so
        the client writes the prompt: ``prefix + "<Instruct>: ...\n<Query>: {query}\n"`` and
        ``"<Document>: {document}" + suffix``, the split of vLLM's own Qwen3 example. Unlike
        this reranker, vLLM cannot cut the body alone: a pair over its ``--max-model-len``
        fails (400), and ``truncate_prompt_tokens`` keeps the prompt's first tokens, cutting
        the closing turn the score is read after. Not for ``milvus-rerank serve``: it writes
        the prompt itself from raw text, and would wrap these a second time.

        Args:
            instruction: What relevance means (default: the model card's web-search one).

        Example:
            >>> VLLMReranker(base_url="http://localhost:8000", **Qwen3Reranker.vllm_templates())
        """
        instruction = check_instruction(instruction)
        if instruction is None:
            instruction = QWEN3_DEFAULT_INSTRUCTION

        def literal(text: str) -> str:
            return text.replace("{", "{{").replace("}", "}}")

        return {
            "query_template": literal(f"{QWEN3_PREFIX}<Instruct>: {instruction}\n<Query>: ")
            + "{query}\n",
            "document_template": "<Document>: {document}" + literal(QWEN3_SUFFIX),
        }
