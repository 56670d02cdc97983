"""What the causal-LM rerankers share: a last-position, label-tokens-only head, and instructions.

Qwen3-Reranker, bge-reranker-v2-gemma and mxbai-rerank-v2 all read the logits of one or two
label tokens at the last position. Their references compute full-vocabulary logits for every
position (up to 256,000 x tokens x rows); ``label_logits`` runs the decoder, takes the last
position's hidden state and multiplies it by the label tokens' rows of the LM head only.
"""

from __future__ import annotations

import copy
import logging
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from typing_extensions import Self

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local.family import HalfDtype, Head, ModelFamily, ModelSource
from milvus_rerank.providers.local.reranker import LocalReranker

__all__ = [
    "FEW_TOKENS",
    "CausalFamily",
    "CausalReranker",
    "InstructionView",
    "LastLayerAtLastPosition",
    "check_instruction",
    "label_logits",
    "text_tokens",
]


#: A pair whose document (Qwen3) or query (mxbai-v2) keeps fewer tokens than this, because
#: the text before it filled the window, is logged: it is scored on next to nothing of it.
FEW_TOKENS = 8


def check_instruction(instruction: object, what: str = "instruction") -> str | None:
    """``instruction`` if it is a str or None, else ``ConfigurationError`` naming it."""
    if instruction is not None and not isinstance(instruction, str):
        raise ConfigurationError(f"{what} must be a str or None, got {instruction!r}")
    return instruction


def text_tokens(offsets: Sequence[tuple[int, int]], first: int) -> tuple[int, int]:
    """The token range of the text that starts at character ``first`` and runs to the end.

    Its tokens are those ending past ``first`` (a space before it may ride on its first
    token, as byte-level BPE writes it); special tokens added after it (empty offsets) are
    left out. Used to find a document inside the prompt text it was tokenized in.
    """
    inside = [j for j, (_, end) in enumerate(offsets) if end > first]
    return (inside[0], inside[-1] + 1) if inside else (len(offsets), len(offsets))


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
    last_only = LastLayerAtLastPosition.for_model(model)

    def forward(batch: dict[str, Any]) -> Any:
        mask = batch["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        inputs = {
            "input_ids": batch["input_ids"],
            "attention_mask": mask,
            "position_ids": positions,
        }
        if last_only is not None:
            hidden = last_only(inputs)
        else:
            hidden = base(**inputs).last_hidden_state[:, -1]
        rows = index.to(head.weight.device)
        bias = None if getattr(head, "bias", None) is None else head.bias[rows]
        logits = torch.nn.functional.linear(hidden, head.weight[rows], bias).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return forward


class CausalFamily(ModelFamily):
    """A decoder-only reranker family: causal LM, left padding, bf16 on CUDA, an instruction.

    Its head reads the logits of the family's label tokens (``label_ids``) at each row's last
    position (``label_logits``) and makes them one raw score (``score_labels``).

    Attributes:
        instruction: The family's instruction (None: its reference's default, if it has one).
    """

    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    padding_side: ClassVar[Literal["left", "right"]] = "left"
    half_dtype: ClassVar[HalfDtype] = "bfloat16"

    def __init__(self, instruction: str | None = None) -> None:
        self.instruction = check_instruction(instruction)
        # Token ids of fixed template pieces, keyed by (tokenizer id, text); shared by copies.
        self._ids: dict[tuple[int, str, bool], list[int]] = {}
        # What has been logged once already, for this reranker and its views (shared too).
        self._warned: set[str] = set()
        # The position table ("positions"), read at bind; shared by copies too.
        self._model: dict[str, int] = {}

    def ids(self, tokenizer: Any, text: str, *, user: bool = False) -> list[int]:
        """``text`` tokenized without added special tokens (cached: template pieces repeat).

        Template text keeps its special tokens; ``user`` text (an instruction) has them split
        where ``split_special_tokens`` is set.
        """
        split = user and self.split_special_tokens
        key = (id(tokenizer), text, split)
        found = self._ids.get(key)
        if found is None:
            # verbose=False: a long instruction is no error here (each family bounds its row).
            found = self._ids[key] = list(
                tokenizer.encode(
                    text, add_special_tokens=False, verbose=False, split_special_tokens=split
                )
            )
        return found

    def cut_texts(self, tokenizer: Any, texts: Sequence[str], limit: int) -> list[list[int]]:
        """User ``texts`` tokenized without added special tokens, each cut to ``limit`` tokens."""
        encoded = tokenizer(
            list(texts),
            add_special_tokens=False,
            max_length=limit,
            truncation=True,
            split_special_tokens=self.split_special_tokens,
        )
        return [list(ids) for ids in encoded["input_ids"]]

    def keep_positions(self, model: Any) -> None:
        """Keep the model's position table size (at bind), which the window checks read."""
        positions = self.max_positions(model.config)
        if positions is not None:
            self._model["positions"] = positions

    def bind(self, model: Any, tokenizer: Any, source: ModelSource) -> Head:
        """Keep the position table (``keep_positions``); the head scores the label logits."""
        self.keep_positions(model)
        logits_of = label_logits(model, self.label_ids(tokenizer, source))

        def forward(batch: dict[str, Any]) -> Any:
            return self.score_labels(logits_of(batch))

        return Head(forward, self.activation(model, source))

    @abstractmethod
    def label_ids(self, tokenizer: Any, source: ModelSource) -> list[int]:
        """The vocabulary ids whose last-position logits score a row (checked at bind)."""

    @abstractmethod
    def score_labels(self, logits: Any) -> Any:
        """One raw score per row from its label logits (float32, one column per label id)."""

    def warn_once(self, logger: logging.Logger, key: str, message: str, *args: object) -> None:
        """Log ``message`` (numbers only, never user text) once for this reranker and its views."""
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message + " (logged once per reranker)", *args)

    def with_instruction(self, instruction: str | None) -> Self:
        """A copy of this family using ``instruction`` (sharing its caches)."""
        twin = copy.copy(self)
        twin.instruction = check_instruction(instruction)
        return twin

    def describe(self) -> dict[str, Any]:
        """Family options for the repr."""
        return {"instruction": self.instruction} if self.instruction is not None else {}


class CausalReranker(LocalReranker):
    """A local LLM reranker: its family carries the instruction, and views swap it cheaply."""

    family: CausalFamily

    @property
    def instruction(self) -> str | None:
        """The instruction set at construction (None: the reference's default, if any)."""
        return self.family.instruction

    def with_instruction(self, instruction: str | None) -> InstructionView:
        """A reranker using ``instruction`` over this one's model, loaded once for both.

        Raises:
            ConfigurationError: the model is loaded and ``instruction`` leaves no room for a
                query (and document) in its window (checked at first scoring otherwise).
        """
        return InstructionView(self, self.family.with_instruction(instruction)).checked()


class InstructionView(LocalReranker):
    """A reranker scoring with another instruction over the same loaded model (no reload).

    Made by ``with_instruction`` on an LLM reranker; shares its runner (weights, tokenizer,
    locks) and differs only in how pairs are written out (its ``family``).
    """

    family: CausalFamily

    def __init__(self, base: Any, family: CausalFamily) -> None:  # no LocalReranker.__init__
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
        return InstructionView(self.base, self.family.with_instruction(instruction)).checked()

    def checked(self) -> Self:
        """This view, its instruction checked against the window if the model is loaded."""
        runner = self.runner
        if runner.loaded:
            loaded = runner.load()
            with runner._tokenizer_lock:
                self.family.check_max_length(loaded.tokenizer, loaded.max_length)
        return self

    def __repr__(self) -> str:
        """As the family's class would be built to score alike, e.g. ``Qwen3Reranker(...)``."""
        fields = ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())
        return f"{type(self.base).__name__}({fields})"


class _LastLayerInputs(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by the last layer's pre-hook to stop the decoder with that layer's inputs."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__("last layer reached")
        self.args, self.kwargs = args, kwargs


class LastLayerAtLastPosition:
    """The decoder's hidden state at the last position, its last layer run for that row only.

    Only the last position is ever read, so the last layer needs its query, attention output
    and MLP at that position alone (keys and values still cover every position): one layer's
    worth of work saved on all other tokens. Supported where the layer is a plain pre-norm
    block (Qwen2, Qwen3, Gemma); elsewhere ``for_model`` returns None and the full decoder runs.
    """

    _TYPES = {"qwen2", "qwen3", "gemma"}

    def __init__(self, model: Any) -> None:
        import importlib

        self.base = model.base_model
        self.layer = self.base.layers[-1]
        self.attn = self.layer.self_attn
        module = importlib.import_module(type(self.attn).__module__)
        self.rotate = module.apply_rotary_pos_emb
        self.state = threading.local()
        self.layer.register_forward_pre_hook(self._hook, with_kwargs=True)

    @classmethod
    def for_model(cls, model: Any) -> LastLayerAtLastPosition | None:
        """The fast path for ``model``, or None where its layers are not known to fit it."""
        config = model.config
        if getattr(config, "model_type", None) not in cls._TYPES:
            return None
        if getattr(config, "use_sliding_window", False) or getattr(
            config, "_attn_implementation", "sdpa"
        ) not in ("sdpa", "eager"):
            return None
        base = model.base_model
        layers = getattr(base, "layers", None)
        if not layers or getattr(base, "norm", None) is None:
            return None
        attn = getattr(layers[-1], "self_attn", None)
        needed = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
        if attn is None or not all(hasattr(attn, name) for name in needed):
            return None
        return cls(model)

    def _hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if getattr(self.state, "capture", False):
            raise _LastLayerInputs(args, kwargs)

    def __call__(self, inputs: dict[str, Any]) -> Any:
        """``base(**inputs).last_hidden_state[:, -1]``, computed with less work."""
        import torch

        self.state.capture = True
        try:
            self.base(**inputs)
        except _LastLayerInputs as stop:
            args, kwargs = stop.args, stop.kwargs
        else:  # pragma: no cover - the hook always fires
            raise RuntimeError("the decoder never reached its last layer")
        finally:
            self.state.capture = False
        hidden = args[0] if args else kwargs["hidden_states"]
        cos, sin = kwargs["position_embeddings"]
        mask = kwargs.get("attention_mask")
        layer, attn = self.layer, self.attn
        rows, width, _ = hidden.shape
        x = layer.input_layernorm(hidden)
        shape = (rows, -1, attn.head_dim)
        q = attn.q_proj(x[:, -1:]).view(rows, 1, *shape[1:])
        k = attn.k_proj(x).view(rows, width, *shape[1:])
        v = attn.v_proj(x).view(rows, width, *shape[1:])
        if getattr(attn, "q_norm", None) is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, _ = self.rotate(q, q, cos[:, -1:], sin[:, -1:])
        k, _ = self.rotate(k, k, cos, sin)
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if mask is not None:
            mask = mask[:, :, -1:, :]
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=attn.scaling
        )
        out = attn.o_proj(out.transpose(1, 2).reshape(rows, 1, -1))
        last = hidden[:, -1:] + out
        last = last + layer.mlp(layer.post_attention_layernorm(last))
        return self.base.norm(last)[:, 0]
