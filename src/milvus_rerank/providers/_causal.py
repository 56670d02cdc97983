"""What the causal-LM rerankers share: a last-position, label-tokens-only head, and instructions.

Qwen3-Reranker, bge-reranker-v2-gemma and mxbai-rerank-v2 all read the logits of one or two
label tokens at the last position. Their references compute full-vocabulary logits for every
position (up to 256,000 x tokens x rows); ``label_logits`` runs the decoder, takes the last
position's hidden state and multiplies it by the label tokens' rows of the LM head only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from typing_extensions import Self

from ..base import Reranker, validate_request
from ..errors import ConfigurationError, InvalidInputError
from ._family import HalfDtype, ModelFamily

__all__ = ["CausalFamily", "InstructionView", "check_instruction", "label_logits"]


def check_instruction(instruction: object, what: str = "instruction") -> str | None:
    """``instruction`` if it is a str or None, else ``ConfigurationError`` naming it."""
    if instruction is not None and not isinstance(instruction, str):
        raise ConfigurationError(f"{what} must be a str or None, got {instruction!r}")
    return instruction


def label_logits(model: Any, token_ids: Sequence[int]) -> Callable[[dict[str, Any]], Any]:
    """A forward returning the logits of ``token_ids`` at each row's last position, in float32.

    Equal to ``model(**batch).logits[:, -1, token_ids]`` (with Gemma-2-style final soft-capping
    where configured) without the full-vocabulary projection. Position ids count real tokens
    only, so a left-padded row scores like the same row alone.
    """
    import torch

    base = model.base_model
    head = model.get_output_embeddings()
    if base is model or head is None or getattr(head, "weight", None) is None:
        raise ConfigurationError(
            f"{type(model).__name__} is not a causal LM with a decoder and an LM head"
        )
    vocab = int(head.weight.shape[0])
    bad = [i for i in token_ids if not 0 <= i < vocab]
    if bad:
        raise ConfigurationError(f"label token ids {bad} are outside the LM head ({vocab} rows)")
    index = torch.tensor(list(token_ids), dtype=torch.long)
    softcap = getattr(model.config, "final_logit_softcapping", None)

    def forward(batch: dict[str, Any]) -> Any:
        mask = batch["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = base(
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions
        ).last_hidden_state[:, -1]
        rows = index.to(head.weight.device)
        bias = None if getattr(head, "bias", None) is None else head.bias[rows]
        logits = torch.nn.functional.linear(hidden, head.weight[rows], bias).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return forward


class CausalFamily(ModelFamily):
    """A decoder-only reranker family: causal LM, left padding, bf16 on CUDA, an instruction.

    Attributes:
        instruction: The family's instruction (None: its reference's default, if it has one).
    """

    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    padding_side: ClassVar[Literal["left", "right"]] = "left"
    half_dtype: ClassVar[HalfDtype] = "bfloat16"

    def __init__(self, instruction: str | None = None) -> None:
        self.instruction = check_instruction(instruction)
        # Token ids of fixed template pieces, keyed by (tokenizer id, text); shared by copies.
        self._ids: dict[tuple[int, str], list[int]] = {}

    def ids(self, tokenizer: Any, text: str) -> list[int]:
        """``text`` tokenized without special tokens (cached: template pieces repeat)."""
        key = (id(tokenizer), text)
        found = self._ids.get(key)
        if found is None:
            found = self._ids[key] = list(tokenizer.encode(text, add_special_tokens=False))
        return found

    def with_instruction(self, instruction: str | None) -> Self:
        """A copy of this family using ``instruction`` (sharing its caches)."""
        twin = copy.copy(self)
        twin.instruction = check_instruction(instruction)
        return twin

    def describe(self) -> dict[str, Any]:
        """Family options for the repr."""
        return {"instruction": self.instruction} if self.instruction is not None else {}


class InstructionView(Reranker):
    """A reranker scoring with another instruction over the same loaded model (no reload).

    Made by ``with_instruction`` on an LLM reranker; shares its runner (weights, tokenizer,
    locks) and differs only in how pairs are written out.
    """

    def __init__(self, base: Any, family: CausalFamily) -> None:
        self.base = base
        self.runner = base.runner
        self.family = family
        self.model_name = base.model_name
        self.provider = base.provider  # type: ignore[misc]

    @property
    def instruction(self) -> str | None:
        """The instruction this view scores with."""
        return self.family.instruction

    def with_instruction(self, instruction: str | None) -> InstructionView:
        """Another view over the same model."""
        return InstructionView(self.base, self.family.with_instruction(instruction))

    def load(self) -> Self:
        """Load the shared model now."""
        self.runner.load()
        return self

    def _score(self, query: str, documents: list[str]) -> list[float]:
        scores: list[float] = self.runner.scores_many(
            [query] * len(documents), documents, self.family
        )
        return scores

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        """Scores of (queries[i], documents[i]) pairs in one batched pass."""
        if len(queries) != len(documents):
            raise InvalidInputError(
                f"score_pairs needs one query per document, got {len(queries)} queries "
                f"for {len(documents)} documents"
            )
        if not documents:
            return []
        for query in queries:
            validate_request(query, (), None)
        _, docs, _ = validate_request(queries[0], documents, None)
        scores: list[float] = self.runner.scores_many(list(queries), docs, self.family)
        return scores

    def _repr_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = self.base._repr_fields()
        fields["instruction"] = self.family.instruction
        return fields
