"""mixedbread's v2 rerankers (``mixedbread-ai/mxbai-rerank-base-v2``/large), like mxbai-rerank."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from typing_extensions import Unpack

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local.causal import (
    FEW_TOKENS,
    CausalFamily,
    CausalReranker,
    text_tokens,
)
from milvus_rerank.providers.local.family import Located, ModelSource, Rows, identity, sigmoid_all
from milvus_rerank.providers.local.options import LocalOptions, check_bool

__all__ = ["MxbaiV2Family", "MxbaiV2Reranker", "estimated_max_for"]

logger = logging.getLogger("milvus_rerank.providers.mxbai")  # the name users configure

MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n<|im_start|>user\n"
)
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\n"
    "Relevance:"
)
#: mxbai-rerank's ``max_length``.
MXBAI_MAX_LENGTH = 8192


def estimated_max_for(model_name: str) -> float:
    """mxbai-rerank's logit scale for ``normalize``: 9 for the base model, else 12 (large)."""
    return 9.0 if model_name == "mixedbread-ai/mxbai-rerank-base-v2" else 12.0


class MxbaiV2Family(CausalFamily):
    """``MxbaiRerankV2``'s prompt and lengths; the score is ``logit("1") - logit("0")``.

    ``max_length`` (at most the position table) is capped so the fixed prompt fits the table;
    the query part is cut to 3/4 of it, the document to what is left, then the document side
    again so the pair fits ``max_length`` (the package's ``only_second`` rule).
    """

    model_types: ClassVar[frozenset[str]] = frozenset({"qwen2"})

    def __init__(
        self,
        instruction: str | None = None,
        *,
        normalize: bool = False,
        estimated_max: float | None = None,
    ) -> None:
        super().__init__(instruction)
        check_bool("normalize", normalize)
        if estimated_max is not None and (
            isinstance(estimated_max, bool)
            or not isinstance(estimated_max, (int, float))
            or not math.isfinite(estimated_max)
            or estimated_max <= 0
        ):
            raise ConfigurationError(
                f"estimated_max must be a positive finite number (a logit scale) or None, "
                f"got {estimated_max!r}"
            )
        self.normalize = normalize
        self.estimated_max = estimated_max

    def default_max_length(self, tokenizer: Any, config: Any) -> int:
        """mxbai-rerank's 8192, capped at the position table by the runner.

        A ``max_length`` past the table is refused at load, as for the other families;
        ``encode`` then leaves room for the fixed prompt as the package does.
        """
        return MXBAI_MAX_LENGTH

    def query_tokens_read(self, max_length: int) -> int | None:
        """The query part keeps its head, 3/4 of the window (at most ``max_length``)."""
        return max_length * 3 // 4

    def check_max_length(self, tokenizer: Any, max_length: int) -> None:
        """The instruction line must leave the query part (3/4 of the window) a query token.

        Checked at load, when a view is made of a loaded reranker, and before each encoding.
        """
        window = self._window(tokenizer, max_length)
        head = len(self.ids(tokenizer, f"{self._instruction_line()}query: ", user=True))
        if head >= window * 3 // 4:
            what = "the instruction line" if self.instruction else "the query label"
            full = window < max_length  # the position table bounds it already
            raise ConfigurationError(
                f"max_length={max_length} leaves no room for a query: the query part may keep "
                f"{window * 3 // 4} tokens (3/4 of the {window} left beside the fixed prompt"
                + (", all the position table allows" if full else "")
                + f") and {what} takes {head}; shorten the instruction"
                + ("" if full else " or raise max_length")
            )

    def _window(self, tokenizer: Any, max_length: int) -> int:
        """``max_length`` less what the fixed prompt needs of the position table (the package's)."""
        fixed = sum(
            len(self.ids(tokenizer, text))
            for text in (MXBAI_PREFIX, MXBAI_TASK, MXBAI_SUFFIX, "\n")
        )
        positions = self._model.get("positions")
        if positions is not None and max_length + fixed > positions:
            return positions - fixed
        return max_length

    def _instruction_line(self) -> str:
        return f"instruction: {self.instruction}\n" if self.instruction else ""

    def encode(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> Rows:
        """Token ids exactly as ``MxbaiRerankV2.prepare_inputs`` builds them."""
        return [item.row for item in self._encode(tokenizer, queries, documents, max_length)]

    def locate(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> list[Located]:
        """``encode``'s rows, each cut document located in ``"document: " + document``.

        The package tokenizes every document whole already; offsets (asked in the same call)
        say which of those tokens are the document's, so ``"document: "`` stays in every
        window.
        """
        return self._encode(tokenizer, queries, documents, max_length, whole=True)

    def _encode(
        self,
        tokenizer: Any,
        queries: Sequence[str],
        documents: Sequence[str],
        max_length: int,
        whole: bool = False,
    ) -> list[Located]:
        prefix, suffix = self.ids(tokenizer, MXBAI_PREFIX), self.ids(tokenizer, MXBAI_SUFFIX)
        task, sep = self.ids(tokenizer, MXBAI_TASK), self.ids(tokenizer, "\n")
        fixed = len(prefix) + len(task) + len(suffix) + len(sep)
        positions = self._model.get("positions")
        self.check_max_length(tokenizer, max_length)
        max_length = self._window(tokenizer, max_length)
        instruction = self._instruction_line()
        unique = list(dict.fromkeys(queries))
        query_limit = max_length * 3 // 4
        queried = [f"{instruction}query: {q}" for q in unique]
        q_ids = dict(zip(unique, self.cut_texts(tokenizer, queried, query_limit), strict=True))
        head = len(self.ids(tokenizer, f"{instruction}query: ", user=True))
        if instruction and query_limit - head < FEW_TOKENS:
            if any(len(ids) >= query_limit for ids in q_ids.values()):
                self.warn_once(
                    logger,
                    "query squeezed",
                    "mxbai-v2: the instruction line takes %d of the %d tokens the query part "
                    "may keep (3/4 of its %d-token window), leaving a long query %d token(s): "
                    "it is scored almost without its query; shorten the instruction or raise "
                    "max_length",
                    head,
                    query_limit,
                    max_length,
                    query_limit - head,
                )
        # whole: cut below, as the package cuts
        docs = self.tokenize_whole(tokenizer, [f"document: {d}" for d in documents], offsets=whole)
        located: list[Located] = []
        for k, (query, doc) in enumerate(zip(queries, docs["input_ids"], strict=True)):
            q = q_ids[query]
            doc_limit = max_length if positions is None else positions - len(q) - fixed
            second = sep + list(doc[: max(0, min(doc_limit, max_length))])
            extra = len(q) + len(second) - max_length
            if 0 < extra < len(second):
                second = second[:-extra]
            row = {"input_ids": prefix + q + second + sep + task + suffix}
            kept = len(second) - len(sep)
            if whole and kept < len(doc):
                at, end = text_tokens(docs["offset_mapping"][k], len("document: "))
                before = len(prefix) + len(q) + len(sep)
                located.append(Located(row, doc[at:end], before + at, before + kept))
            else:
                located.append(Located(row))
        return located

    def label_ids(self, tokenizer: Any, source: ModelSource) -> list[int]:
        """The first tokens of ``"1"`` and ``"0"``."""
        return [int(tokenizer(t, add_special_tokens=False)["input_ids"][0]) for t in "10"]

    def score_labels(self, logits: Any) -> Any:
        """``logit("1") - logit("0")``."""
        return logits[:, 0] - logits[:, 1]

    def activation(self, model: Any, source: ModelSource) -> Callable[[list[float]], list[float]]:
        """The package's shifted sigmoid when ``normalize``, else the raw logit difference."""
        if not self.normalize:
            return identity
        shift = (self.estimated_max or estimated_max_for(source.model_name)) / 2

        def normalize(scores: list[float]) -> list[float]:
            return sigmoid_all([s - shift for s in scores])

        return normalize

    def describe(self) -> dict[str, Any]:
        """Family options for the repr."""
        fields: dict[str, Any] = {"normalize": self.normalize}
        if self.estimated_max is not None:
            fields["estimated_max"] = self.estimated_max
        return {**fields, **super().describe()}


class MxbaiV2Reranker(CausalReranker):
    """mxbai-rerank-v2 scored exactly like the ``mxbai-rerank`` package's ``MxbaiRerankV2``.

    Scores are ``logit("1") - logit("0")``, or with ``normalize=True`` the package's
    probability ``sigmoid(score - estimated_max / 2)`` (``estimated_max`` 9 for the base
    model's hub name, 12 otherwise, as the package; pass it for a local copy of the base).

    Args:
        model_name: Hugging Face hub name or local directory.
        instruction: An optional ``instruction:`` line before the query (None or ``""``: no
            line, as the package; a blank string is written as given).
        normalize: Return the package's probability instead of the logit difference.
        estimated_max: Logit scale for ``normalize`` (None: by model name).
        **options: The options of every local reranker (``LocalOptions``); ``max_length``
            defaults to the package's 8192, capped at the model's position table (a larger
            value is refused at load, as by the other families).
    """

    provider: ClassVar[str] = "mxbai-v2"
    default_model: ClassVar[str] = "mixedbread-ai/mxbai-rerank-base-v2"
    tiny_builder: ClassVar[str | None] = "build_tiny_mxbai_v2_reranker"
    family: MxbaiV2Family

    def __init__(
        self,
        model_name: str = default_model,
        *,
        instruction: str | None = None,
        normalize: bool = False,
        estimated_max: float | None = None,
        **options: Unpack[LocalOptions],
    ) -> None:
        family = MxbaiV2Family(instruction, normalize=normalize, estimated_max=estimated_max)
        super().__init__(model_name, family, **options)
        self.normalize = normalize
