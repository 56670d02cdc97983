"""``LocalReranker``: the ``Reranker`` over a ``LocalModelRunner`` and a ``ModelFamily``.

Each family's module subclasses it with its provider key, default model, tiny stand-in and
constructor; it scores through the runner's shared batches (``runner_batching.py``) or, without
them, on its own.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from typing_extensions import Self, Unpack

from milvus_rerank.core.base import Reranker, validate_pairs
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.results import Usage
from milvus_rerank.providers.local.batching import spread, unique_pairs
from milvus_rerank.providers.local.family import ModelFamily
from milvus_rerank.providers.local.options import (
    INSTRUCTION_PROVIDERS,
    LOCAL_DEFAULTS,
    LocalOptions,
    unknown_options,
)
from milvus_rerank.providers.local.runner import LocalModelRunner
from milvus_rerank.providers.local.runner_batching import ascore_rows, score_rows

__all__ = ["LocalReranker"]


class LocalReranker(Reranker):
    """A ``Reranker`` over a ``LocalModelRunner`` and a ``ModelFamily``.

    A family's module subclasses this with its ``provider``, ``default_model``,
    ``tiny_builder`` and an
    ``__init__(model_name=default_model, *, <family options>, **options: Unpack[LocalOptions])``
    that passes its ``ModelFamily`` instance here.
    """

    provider: ClassVar[str] = "local"
    batching = "rows"  # serve feeds its runner rows (a declared capability, see Reranker)
    #: The model loaded when none is named.
    default_model: ClassVar[str]
    #: The ``tiny.py`` builder of a random checkpoint of this architecture (None: none).
    tiny_builder: ClassVar[str | None] = None

    def __init__(
        self, model_name: str, family: ModelFamily, **options: Unpack[LocalOptions]
    ) -> None:
        unknown = sorted(set(options) - set(LOCAL_DEFAULTS))
        if unknown:
            owner = type(self)
            raise ConfigurationError(
                unknown_options(owner.__name__, owner.family_options(), unknown)
            )
        self.family = family
        self.runner = LocalModelRunner(model_name, family, **options)
        self.model_name = self.runner.model_name

    @classmethod
    def family_options(cls) -> tuple[str, ...]:
        """The keyword options this class takes besides ``LocalOptions`` (e.g. ``instruction``).

        Read from the constructor's keyword-only parameters, so the command line and error
        messages follow each family's own signature.
        """
        parameters = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)

    if not TYPE_CHECKING:  # for mypy, a missing attribute stays an error

        def __getattr__(self, name: str) -> Any:
            if name in ("with_instruction", "instruction"):
                raise AttributeError(
                    f"{type(self).__name__} takes no instruction; the rerankers that do are "
                    f"{', '.join(INSTRUCTION_PROVIDERS)}"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def build_tiny_checkpoint(cls, path: Path) -> Path:
        """Build a tiny randomly initialized checkpoint of this family's architecture at ``path``.

        The demo and ``eval`` fall back to it where the real weights cannot be loaded; its
        scores are meaningless and it must always be labelled as such. The builder is the
        class's ``tiny_builder``, with weights spread wide enough to rank distinctly.

        Raises:
            NotImplementedError: the class names no ``tiny_builder``.
        """
        if cls.tiny_builder is None:
            raise NotImplementedError(f"{cls.__name__} has no tiny stand-in")
        from milvus_rerank.providers.local import tiny

        build: Callable[..., Path] = getattr(tiny, cls.tiny_builder)
        return build(path, initializer_range=0.2)

    def load(self) -> Self:
        """Load the model now rather than on the first call (e.g. at service start-up).

        Raises:
            ConfigurationError: the model, device, dtype or ``max_length`` cannot work.
        """
        self.runner.load()
        return self

    @property
    def device(self) -> str | None:
        """The device the model runs on once loaded; before, the one asked for (None: auto).

        pymilvus-model's rerank functions expose ``rf.device`` too.
        """
        runner = self.runner
        return runner.load().device if runner.loaded else runner.requested_device

    @property
    def batch_size(self) -> int:
        """Rows per forward pass at most (pymilvus-model's ``rf.batch_size``)."""
        return self.runner.batch_size

    def input_window(self) -> int:
        """The pair token limit in force (``max_length``, or the family's default); loads."""
        return self.runner.load().max_length

    def passages_per_document(self) -> int:
        """Windows of one document the model may read (``serve`` sizes its text cap by it).

        ``max_passages`` with ``long_documents="max_passage"``, else 1.
        """
        runner = self.runner
        return runner.max_passages if runner.long_documents == "max_passage" else 1

    def _scores_and_tokens(
        self, queries: Sequence[str], documents: Sequence[str]
    ) -> tuple[list[float], list[int]]:
        """Scores and tokens per pair: in shared batches (``batch_across_calls``) or alone.

        Identical pairs are scored once (``unique_pairs``): they share one score, so equal
        texts keep their input order, and their tokens count once.
        """
        unique_queries, unique_documents, where = unique_pairs(queries, documents)
        if self.runner.options["batch_across_calls"]:
            scored = score_rows(self.runner, self.family, unique_queries, unique_documents)
        else:
            scored = self.runner.scores_and_tokens(unique_queries, unique_documents, self.family)
        return spread(scored, where)

    def _score(self, query: str, documents: list[str]) -> list[float]:
        return self._scores_and_tokens([query] * len(documents), documents)[0]

    def _score_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        scores, tokens = self._scores_and_tokens([query] * len(documents), documents)
        return scores, Usage(tokens=sum(tokens))

    async def _ascore_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        if not self.runner.options["batch_across_calls"]:
            return await asyncio.to_thread(self._score_usage, query, documents)
        queries, unique_documents, where = unique_pairs([query] * len(documents), documents)
        scored = await ascore_rows(self.runner, self.family, queries, unique_documents)
        scores, tokens = spread(scored, where)
        return scores, Usage(tokens=sum(tokens))

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> list[float]:
        """Scores of (queries[i], documents[i]) pairs in one batched pass (used by ``serve``).

        Raises:
            InvalidInputError: ``queries`` and ``documents`` differ in length, or hold non-text.
        """
        pair_queries, docs = validate_pairs(queries, documents)
        return self._scores_and_tokens(pair_queries, docs)[0] if docs else []

    def _repr_fields(self) -> dict[str, Any]:
        runner = self.runner
        fields: dict[str, Any] = {
            "model_name": runner.model_name,
            "device": runner.requested_device,
            "batch_size": runner.batch_size,
            "max_length": runner.requested_max_length,
        }
        if runner.dtype != "auto":
            fields["dtype"] = runner.dtype
        passages = {
            "long_documents": runner.long_documents,
            "passage_overlap": runner.passage_overlap,
            "max_passages": runner.max_passages,
            "split_special_tokens": runner.split_special_tokens,
        }
        fields.update({k: v for k, v in passages.items() if v != LOCAL_DEFAULTS.get(k)})
        for name in (
            *("batch_across_calls", "batch_wait_ms", "batch_workers"),
            *("backend", "quantization", "onnx_file", "threads"),
        ):
            if runner.options[name] != LOCAL_DEFAULTS[name]:
                fields[name] = runner.options[name]
        return {**fields, **self.family.describe()}
