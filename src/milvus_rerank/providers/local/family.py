"""What a local model family decides: how pairs become tokens, and model outputs become scores.

``LocalModelRunner`` (``runner.py``) owns everything families share: loading from a directory or
the hub, device and dtype, length-sorted token-budget batching, padding, inference mode, and
the thread-safe lazy load. A ``ModelFamily`` fills in the rest from its own module:

=========================  =================================================================
``auto_class``             the ``transformers`` Auto class that loads the checkpoint
``padding_side``           ``"right"`` (encoders) or ``"left"`` (decoders scored at the end)
``half_dtype``             what ``dtype="auto"`` picks on CUDA with ``use_fp16`` (fp16 / bf16)
``default_max_length``     the pair token limit when the caller gives none
``max_positions``          the longest input the model can encode (checked at load)
``check_max_length``       reject a limit the family cannot honour (``ConfigurationError``)
``model_types``            the ``config.model_type`` values of its checkpoints (checked at load)
``encode``                 tokenize and truncate pairs, unpadded, exactly like the reference
``locate``                 ``encode``'s rows, each with where its document sits (``Located``),
                           so ``long_documents="max_passage"`` can score the rest of it
``bind``                   at load: check the model, return its ``Head`` (forward, activation)
``activation``             the head's raw scores -> the scores (the sigmoid when ``normalize``)
=========================  =================================================================

A causal LLM reranker (Qwen3-Reranker, bge-reranker-v2-gemma, mxbai-rerank-v2) is one new
module plus a registry line, with no change to the runner. A sketch::

    class Qwen3Family(ModelFamily):
        auto_class = "AutoModelForCausalLM"
        padding_side = "left"          # the last position is real in every row
        half_dtype = "bfloat16"

        def default_max_length(self, tokenizer, config):
            return 8192

        def encode(self, tokenizer, queries, documents, max_length):
            # prefix + "<Query>: q <Document>: d" (cut to fit) + suffix, no padding
            return [{"input_ids": ids} for ids in ...]

        def bind(self, model, tokenizer, source):
            no, yes = (tokenizer.convert_tokens_to_ids(t) for t in ("no", "yes"))
            base, head = model.get_decoder(), model.get_output_embeddings()

            def forward(batch):
                hidden = base(**batch).last_hidden_state[:, -1]     # last position only
                logits = head(hidden)[:, [no, yes]].float()         # two vocabulary rows
                return torch.log_softmax(logits, dim=-1)[:, 1].exp()

            return Head(forward)

    class Qwen3Reranker(LocalReranker):
        provider = "qwen3"
        default_model = "Qwen/Qwen3-Reranker-0.6B"

        def __init__(self, model_name=default_model, **options: Unpack[LocalOptions]):
            super().__init__(model_name, Qwen3Family(), **options)

A family instance belongs to one reranker; ``bind`` runs once, under the runner's load lock.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Literal

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local.cls_forward import cls_only_forward

__all__ = [
    "ClassifierForward",
    "Head",
    "HalfDtype",
    "Located",
    "ModelFamily",
    "ModelSource",
    "Rows",
    "SequenceClassifierFamily",
    "controls_as_unk",
    "identity",
    "sigmoid",
    "sigmoid_all",
    "text_controls",
]

#: Encoded pairs, unpadded: one dict per pair, ``input_ids`` (and, where the model takes them,
#: ``token_type_ids``) as lists of ints. The runner pads them and adds ``attention_mask``.
Rows = list[dict[str, list[int]]]
HalfDtype = Literal["float16", "bfloat16"]
#: Position tables that reserve ``padding_idx + 1`` slots (RoBERTa-style position ids).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "longformer"}


def text_controls(tokenizer: Any) -> tuple[frozenset[int], int | None]:
    """The special-token ids user text must not produce (all but ``<unk>``), and ``<unk>``'s."""
    unk = tokenizer.unk_token_id
    return frozenset(tokenizer.all_special_ids) - {unk}, unk


def controls_as_unk(
    ids: Sequence[int],
    controls: tuple[frozenset[int], int | None],
    sequences: Sequence[int | None] | None = None,
) -> list[int]:
    """``ids`` with any special token inside user text read as ``<unk>``.

    ``split_special_tokens`` keeps special-token strings from matching the tokenizer's added
    tokens, but a model vocabulary that holds the special pieces itself (XLM-R's unigram
    scores ``</s>`` like any piece) still produces them from text: there they become
    ``<unk>``. ``sequences`` (a pair's sequence ids: None marks the template's tokens) says
    which positions are user text (None: all of them).
    """
    special, unk = controls
    if unk is None or not special.intersection(ids):
        return list(ids)
    return [
        unk if i in special and (sequences is None or sequences[k] is not None) else i
        for k, i in enumerate(ids)
    ]


def identity(scores: list[float]) -> list[float]:
    """The activation that keeps raw scores."""
    return scores


def sigmoid(x: float) -> float:
    """The logistic function, without overflow for large negative logits."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def sigmoid_all(logits: list[float]) -> list[float]:
    """``sigmoid`` of each logit (the probability form of one-logit rerankers)."""
    return [sigmoid(x) for x in logits]


@dataclass(frozen=True)
class ModelSource:
    """Where the model came from, for families that read more than the weights (configs)."""

    model_name: str
    #: The local directory, or None when the model came from the hub cache.
    path: Path | None
    revision: str | None
    cache_dir: str | None
    trust_remote_code: bool


@dataclass(frozen=True)
class Located:
    """One pair's truncated row and where its document sits in it (``ModelFamily.locate``).

    ``row["input_ids"][start:stop]`` is the head of ``document`` that truncation kept, and
    ``document`` is the whole document's token ids as tokenized in that row (the same ids, in
    the same context, with nothing decoded and re-encoded). A row whose document fits, or
    whose document the family does not locate, leaves ``document`` empty: it stays one row.

    Attributes:
        row: The row exactly as ``encode`` makes it.
        document: The whole document's token ids (empty: the row is never split).
        start: Where the document's first kept token sits in the row.
        stop: Where the row's document part ends (what follows, such as a suffix, stays).
    """

    row: dict[str, list[int]]
    document: Sequence[int] = ()
    start: int = 0
    stop: int = 0


@dataclass(frozen=True)
class Head:
    """What a family derives from a loaded model.

    Attributes:
        forward: A padded batch (tensors on the model's device: ``input_ids``,
            ``attention_mask`` and any other encoded column) -> one raw score per row, a tensor
            of shape ``[rows]`` (or ``[rows, 1]``). Runs under ``torch.inference_mode``; on the
            ONNX backend the batch and the scores are int64 and float32 numpy arrays.
        activate: Raw scores (Python floats, in input order) -> the reranker's scores.
    """

    forward: Callable[[dict[str, Any]], Any]
    activate: Callable[[list[float]], list[float]] = identity


class ModelFamily(ABC):
    """How one family of checkpoints scores (query, document) pairs; see the module docstring."""

    #: The ``transformers`` Auto class that loads the checkpoint.
    auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    #: Where padding goes in a batch. Decoders read the last position, so they pad left.
    padding_side: ClassVar[Literal["left", "right"]] = "right"
    #: The half precision ``dtype="auto"`` picks on CUDA when ``use_fp16`` is set.
    half_dtype: ClassVar[HalfDtype] = "float16"
    #: The ``config.model_type`` values of this family's checkpoints (empty: any). Fine-tunes
    #: keep their base's type, so another type is another family's checkpoint.
    model_types: ClassVar[frozenset[str]] = frozenset()
    #: Tokenize user text (queries, documents, instructions) with special-token strings such
    #: as ``<|im_end|>`` split into ordinary pieces, so text cannot write control tokens into
    #: a row; the family's own template keeps its special tokens. Set by the runner from
    #: ``LocalOptions.split_special_tokens`` (off: the references tokenize them as controls).
    split_special_tokens: bool = False
    #: Apply the sigmoid to the raw scores (what ``activation`` does by default); a family
    #: with a ``normalize`` option sets it from there.
    normalize: bool = False
    #: Whether the family runs on ONNX Runtime (``backend="onnx"``): its forward is one
    #: graph with ``input_ids``/``attention_mask`` (/``token_type_ids``) in and one logit out.
    onnx_ready: ClassVar[bool] = False
    #: The backend the reranker runs (``LocalOptions.backend``), set by the runner: on
    #: ``"onnx"`` the activation must not need torch.
    backend: str = "torch"

    @abstractmethod
    def default_max_length(self, tokenizer: Any, config: Any) -> int:
        """The pair token limit when the caller sets none (the reference library's default)."""

    def max_positions(self, config: Any) -> int | None:
        """The longest input the model encodes (None: no known bound).

        The position table's size, less the slots RoBERTa-style models reserve for padding.
        """
        positions = getattr(config, "max_position_embeddings", None)
        if not isinstance(positions, int) or positions <= 0:
            return None
        if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
            positions -= int(getattr(config, "pad_token_id", 1) or 1) + 1
        return positions

    def check_max_length(self, tokenizer: Any, max_length: int) -> None:
        """Raise ``ConfigurationError`` where ``max_length`` leaves no room for a pair."""
        specials = int(tokenizer.num_special_tokens_to_add(pair=True))
        if max_length <= specials:
            raise ConfigurationError(
                f"max_length={max_length} leaves no room for text: a pair already takes "
                f"{specials} special tokens"
            )

    def check_model_type(self, config: Any, source: ModelSource) -> None:
        """Refuse a checkpoint whose ``model_type`` is not one of ``model_types``.

        Every causal LM can be asked for a label token's logit, so a checkpoint of another
        family would score without complaint, and meaninglessly.

        Raises:
            ConfigurationError: naming the checkpoint's type and the expected ones.
        """
        found = getattr(config, "model_type", None)
        if not self.model_types or not isinstance(found, str) or found in self.model_types:
            return
        expected = ", ".join(map(repr, sorted(self.model_types)))
        raise ConfigurationError(
            f"model {source.model_name!r} is a {found!r} checkpoint, but {type(self).__name__} "
            f"scores model_type {expected} checkpoints only; choose the reranker made for "
            "this model (milvus-rerank --help lists them with their default models)"
        )

    def check_config(self, config: Any, source: ModelSource) -> None:
        """Refuse a checkpoint from its config alone, before its weights load.

        ``check_model_type`` by default; a family adds what else its config decides.
        """
        self.check_model_type(config, source)

    def query_tokens_read(self, max_length: int) -> int | None:
        """The most tokens of a query (read from its head) any row of this family holds.

        The runner cuts a longer query where no token of those can change
        (``LocalModelRunner.clip_queries``). None (the default): no bound is known, so a
        query is never cut.
        """
        return None

    def user_controls(self, tokenizer: Any) -> tuple[frozenset[int], int | None] | None:
        """What ``controls_as_unk`` checks user text with: None unless ``split_special_tokens``."""
        return text_controls(tokenizer) if self.split_special_tokens else None

    def tokenize_whole(self, tokenizer: Any, texts: Sequence[str], *, offsets: bool = False) -> Any:
        """User ``texts`` tokenized whole (no length warning), without added special tokens.

        Special-token strings in them are split where ``split_special_tokens`` is set;
        ``offsets`` asks for the ``offset_mapping`` too.
        """
        return tokenizer(
            list(texts),
            add_special_tokens=False,
            return_offsets_mapping=offsets,
            return_attention_mask=False,
            verbose=False,
            split_special_tokens=self.split_special_tokens,
        )

    @abstractmethod
    def encode(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> Rows:
        """Tokenize ``(queries[i], documents[i])`` pairs, truncated to ``max_length``, unpadded.

        Called under the runner's tokenizer lock (fast tokenizers keep truncation state).
        """

    def locate(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> list[Located]:
        """``encode``'s rows, each with its document located (see ``Located``).

        With ``long_documents="max_passage"`` the runner splits a document that did not fit
        into windows of the kept length and swaps each window in for the kept part, so the
        family's own truncation rule decides how much of a document fits beside its query.
        The default locates nothing: such a family scores long documents truncated. Called
        under the runner's tokenizer lock.
        """
        return [Located(row) for row in self.encode(tokenizer, queries, documents, max_length)]

    @abstractmethod
    def bind(self, model: Any, tokenizer: Any, source: ModelSource) -> Head:
        """Check the loaded model (``ConfigurationError`` if it cannot score) and build its head."""

    def activation(self, model: Any, source: ModelSource) -> Callable[[list[float]], list[float]]:
        """The activation of the head's raw scores: the sigmoid when ``normalize``, else none."""
        return sigmoid_all if self.normalize else identity

    def bind_onnx(
        self, forward: Callable[[dict[str, Any]], Any], config: Any, source: ModelSource
    ) -> Head:
        """The head over an ONNX Runtime ``forward`` (``onnx_ready`` families only).

        Raises:
            ConfigurationError: the family has no ONNX path, or the config cannot score.
        """
        raise ConfigurationError(
            f"{type(self).__name__} has no ONNX path (backend='onnx' runs the encoder "
            "cross-encoders: cross-encoder and bge); use backend='torch'"
        )

    def describe(self) -> dict[str, Any]:
        """Family options shown in the reranker's repr."""
        return {}


class SequenceClassifierFamily(ModelFamily):
    """Encoder cross-encoders with a one-logit classification head (BERT, XLM-R...).

    The score is the one logit; stock BERT and XLM-R classifiers run their last layer for
    ``[CLS]`` only (``_cls_forward``), the one position they read.
    """

    def check_config(self, config: Any, source: ModelSource) -> None:
        """The model type, a classifier's architecture, and one output label."""
        super().check_config(config, source)
        causal = [a for a in getattr(config, "architectures", None) or () if "CausalLM" in str(a)]
        if causal:  # an LLM reranker's checkpoint: it has no classifier head to read
            raise ConfigurationError(
                f"model {source.model_name!r} is a {getattr(config, 'model_type', None)!r} "
                f"causal LM checkpoint ({causal[0]}), an LLM reranker's, not a sequence "
                f"classifier as {type(self).__name__} reads; choose the reranker made for this "
                "model, e.g. qwen3, bge-llm or mxbai-v2 (milvus-rerank --help lists them)"
            )
        num_labels = int(getattr(config, "num_labels", 1))
        if num_labels != 1:
            raise ConfigurationError(
                f"model {source.model_name!r} has {num_labels} output labels; a reranker needs "
                "a model with one relevance logit (num_labels=1)"
            )

    onnx_ready: ClassVar[bool] = True

    def bind(self, model: Any, tokenizer: Any, source: ModelSource) -> Head:
        """Refuse multi-label heads; use the ``[CLS]``-only forward where the layout allows."""
        self.check_config(model.config, source)
        return Head(ClassifierForward(model), self.activation(model, source))

    def bind_onnx(
        self, forward: Callable[[dict[str, Any]], Any], config: Any, source: ModelSource
    ) -> Head:
        """The head over an ONNX graph of this classifier: its logits, this family's activation."""
        self.check_config(config, source)
        return Head(forward, self.activation(SimpleNamespace(config=config), source))


class ClassifierForward:
    """Logits of a one-label classifier: the ``[CLS]``-only path where possible, else its own.

    Attributes:
        fast: The ``[CLS]``-only forward, or None where the model's own forward runs.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        # [CLS] must sit at position 0 of every row: the runner pads these families right.
        self.fast: Callable[..., Any] | None = cls_only_forward(model)

    def __call__(self, batch: dict[str, Any]) -> Any:
        """One logit per row of the padded batch."""
        if self.fast is not None:
            return self.fast(**batch).view(-1)
        return self.model(**batch, return_dict=True).logits.view(-1)
