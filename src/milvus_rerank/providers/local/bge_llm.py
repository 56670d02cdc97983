"""BAAI's LLM reranker (``BAAI/bge-reranker-v2-gemma``), scored like FlagEmbedding."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from typing_extensions import Unpack

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local.causal import CausalFamily, CausalReranker, text_tokens
from milvus_rerank.providers.local.family import Located, ModelSource, Rows
from milvus_rerank.providers.local.options import LocalOptions, check_bool, check_query_max_length

__all__ = ["BGE_LLM_DEFAULT_PROMPT", "BGELLMFamily", "BGELLMReranker"]

logger = logging.getLogger("milvus_rerank.providers.bge_llm")  # the name users configure

#: FlagLLMReranker's prompt when none is given.
BGE_LLM_DEFAULT_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the "
    "query by providing a prediction of either 'Yes' or 'No'."
)
#: FlagLLMReranker's ``max_length``.
BGE_LLM_MAX_LENGTH = 512


class BGELLMFamily(CausalFamily):
    r"""``FlagLLMReranker.compute_score``: ``[bos] A: q \n B: p \n prompt``, the "Yes" logit.

    The query (with ``"A: "``) is cut to ``query_max_length`` (3/4 of ``max_length`` by
    default) and the passage (with ``"B: "``) to ``max_length``; then ``"\n" + passage`` is cut
    from its end so the pair fits ``max_length + len("\n") + len(prompt)`` (left alone when
    it cannot absorb the excess), and ``"\n" + prompt`` is appended. So inputs can exceed
    ``max_length``, exactly as in FlagEmbedding. The instruction is the prompt.

    Unlike FlagEmbedding, a row never runs past the model's position table: one that would
    (a long prompt) loses the end of its passage, then of its query, to fit, with a warning;
    a prompt too long to leave room for any query and passage is a ``ConfigurationError``.
    """

    model_types: ClassVar[frozenset[str]] = frozenset({"gemma", "gemma2"})

    def __init__(
        self,
        instruction: str | None = None,
        *,
        normalize: bool = False,
        query_max_length: int | None = None,
    ) -> None:
        super().__init__(instruction)
        self.normalize = check_bool("normalize", normalize)
        self.query_max_length = check_query_max_length(query_max_length)

    def default_max_length(self, tokenizer: Any, config: Any) -> int:
        """FlagLLMReranker's default, 512."""
        return BGE_LLM_MAX_LENGTH

    def query_tokens_read(self, max_length: int) -> int | None:
        """``"A: " + query`` keeps its head, ``query_max_length`` tokens (3/4 of max_length)."""
        return self.query_max_length or max_length * 3 // 4

    def check_max_length(self, tokenizer: Any, max_length: int) -> None:
        """Any positive limit works (the prompt comes after truncation); ``check_prompt`` runs."""
        self.check_prompt(tokenizer)

    def check_prompt(self, tokenizer: Any) -> None:
        """Refuse a prompt that leaves no room for a query and a passage in the position table.

        Known once the model is loaded (the table, the prompt's tokens): at load, when a view
        is made of a loaded reranker, and before each encoding (views made before the load).
        """
        positions = self._model.get("positions")
        if positions is None:
            return
        prompt = self.ids(tokenizer, self._prompt(), user=True)
        labels = self.ids(tokenizer, "A: ") + self.ids(tokenizer, "B: ")
        fixed = len(_head(tokenizer)) + 2 * len(self.ids(tokenizer, "\n")) + len(labels)
        if fixed + len(prompt) >= positions:
            raise ConfigurationError(
                f"the bge-llm instruction (prompt) takes {len(prompt)} tokens: with the "
                f"{fixed} tokens every pair needs, it leaves no room for a query and a passage "
                f"in the model's position table ({positions} tokens); shorten it to fewer than "
                f"{positions - fixed} tokens"
            )

    def encode(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> Rows:
        """Token ids exactly as ``FlagLLMReranker.compute_score_single_gpu`` builds them."""
        return [row for row, _ in self._encode(tokenizer, queries, documents, max_length)]

    def locate(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> list[Located]:
        """``encode``'s rows; a cut passage gets its document located in ``"B: " + passage``.

        Only a passage at ``max_length`` or shortened to fit can have lost tokens; it is
        tokenized again whole, with offsets, and the windows replace the document's tokens
        after ``"B: "`` (which every window keeps).
        """
        encoded = self._encode(tokenizer, queries, documents, max_length)
        located = [Located(row) for row, _ in encoded]
        cut = [
            i
            for i, (_, (_, kept, length)) in enumerate(encoded)
            if kept < length or length >= max_length
        ]
        if not cut:
            return located
        again = self.tokenize_whole(tokenizer, ["B: " + documents[i] for i in cut], offsets=True)
        for i, ids, offsets in zip(cut, again["input_ids"], again["offset_mapping"], strict=True):
            row, (before, kept, _) = encoded[i]
            at, end = text_tokens(offsets, len("B: "))
            if kept < end:  # a passage exactly at max_length may have lost nothing
                located[i] = Located(row, ids[at:end], before + at, before + kept)
        return located

    def _encode(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> list[tuple[dict[str, list[int]], tuple[int, int, int]]]:
        """Rows, each with (where its passage starts, passage tokens kept, passage tokens)."""
        self.check_prompt(tokenizer)
        query_limit = self.query_max_length or max_length * 3 // 4
        unique = list(dict.fromkeys(queries))
        labelled = self.cut_texts(tokenizer, ["A: " + q for q in unique], query_limit)
        q_ids = dict(zip(unique, labelled, strict=True))
        p_ids = self.cut_texts(tokenizer, ["B: " + d for d in documents], max_length)
        sep, prompt_ids = self.ids(tokenizer, "\n"), self.ids(tokenizer, self._prompt(), user=True)
        budget = max_length + len(sep) + len(prompt_ids)
        head = _head(tokenizer)
        from_left = getattr(tokenizer, "truncation_side", "right") == "left"
        positions = self._model.get("positions")
        rows: list[tuple[dict[str, list[int]], tuple[int, int, int]]] = []
        for query, passage in zip(queries, p_ids, strict=True):
            first, second = head + q_ids[query], sep + passage
            extra = len(first) + len(second) - budget
            if 0 < extra < len(second):
                second = second[extra:] if from_left else second[:-extra]
            length = len(first) + len(second) + len(sep) + len(prompt_ids)
            if positions is not None and (over := length - positions) > 0:
                self.warn_once(
                    logger,
                    "past table",
                    "bge-llm: a pair with its %d-token prompt came to %d tokens past the "
                    "model's %d-token position table (FlagEmbedding would run it so); its "
                    "passage, then its query, was cut to fit",
                    len(prompt_ids),
                    over,
                    positions,
                )
                cut = min(over, len(second) - len(sep))  # the passage's end first
                second = second[: len(second) - cut]
                first = first[: len(first) - (over - cut)]  # check_prompt left room for it
            row = {"input_ids": first + second + sep + prompt_ids}
            rows.append((row, (len(first) + len(sep), len(second) - len(sep), len(passage))))
        return rows

    def _prompt(self) -> str:
        return BGE_LLM_DEFAULT_PROMPT if self.instruction is None else self.instruction

    def label_ids(self, tokenizer: Any, source: ModelSource) -> list[int]:
        """The first token of ``"Yes"``."""
        yes = tokenizer("Yes", add_special_tokens=False)["input_ids"]
        if not yes:
            raise ConfigurationError(f"the tokenizer of {source.model_name!r} cannot encode 'Yes'")
        return [int(yes[0])]

    def score_labels(self, logits: Any) -> Any:
        """The "Yes" logit."""
        return logits[:, 0]

    def describe(self) -> dict[str, Any]:
        """Family options for the repr."""
        fields = {"normalize": self.normalize, "query_max_length": self.query_max_length}
        return {**fields, **super().describe()}


def _head(tokenizer: Any) -> list[int]:
    """``[bos]`` where the tokenizer has one (other than its pad token), as FlagEmbedding adds."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and bos != tokenizer.pad_token_id else []


class BGELLMReranker(CausalReranker):
    """bge-reranker-v2-gemma scored exactly like ``FlagEmbedding.FlagLLMReranker.compute_score``.

    Scores are the raw "Yes" logit, or its sigmoid in [0, 1] with ``normalize=True`` (both as
    FlagEmbedding; raw is its default and ours). Only the last position's hidden state meets
    the LM head, and only its "Yes" row: FlagEmbedding computes all 256,000 logits everywhere.

    Args:
        model_name: Hugging Face hub name or local directory.
        instruction: The prompt after the pair (None: FlagEmbedding's; ``""``: no prompt at
            all, as FlagEmbedding does with ``prompt=""``).
        normalize: Apply the sigmoid to the logit.
        query_max_length: Token limit of ``"A: " + query`` (default ``max_length * 3 // 4``).
        **options: The options of every local reranker (``LocalOptions``); ``max_length``
            defaults to FlagEmbedding's 512.
    """

    provider: ClassVar[str] = "bge-llm"
    default_model: ClassVar[str] = "BAAI/bge-reranker-v2-gemma"
    tiny_builder: ClassVar[str | None] = "build_tiny_gemma_reranker"
    family: BGELLMFamily

    def __init__(
        self,
        model_name: str = default_model,
        *,
        instruction: str | None = None,
        normalize: bool = False,
        query_max_length: int | None = None,
        **options: Unpack[LocalOptions],
    ) -> None:
        family = BGELLMFamily(instruction, normalize=normalize, query_max_length=query_max_length)
        super().__init__(model_name, family, **options)
        self.normalize = normalize
