"""``RerankAdapter``: what both framework adapters' pydantic models share.

Their option checks, the refusal to pickle them and the results a call keeps, as a mixin, so
that LangChain's ``RerankCompressor`` and LlamaIndex's ``RerankPostprocessor`` keep their own
framework base class. The checks themselves are the functions of ``options.py``; this module
is the one of the two that needs pydantic.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydantic import ValidationInfo, field_validator

from milvus_rerank.core.base import Reranker, RerankResponse
from milvus_rerank.core.results import RerankResult
from milvus_rerank.integrations.options import (
    ScoreThreshold,
    kept_results,
    refuse_unpicklable,
    threshold_option,
    top_n_option,
)

__all__ = ["RerankAdapter"]


class RerankAdapter:
    """What both adapters' pydantic models share: a mixin before the framework's base class.

    The adapter declares the ``reranker``, ``top_n`` and ``score_threshold`` fields (in its
    framework's style) and its name, ``owner``.

    ``score_threshold`` is held to the scale of the reranker that answered (``kept``): one
    number holds the answers of the reranker's first choice (a ``FallbackReranker``'s first
    member), and a later member's answer is cut by ``top_n`` alone, with a WARNING on the
    adapter's logger; ``{label: threshold}`` sets one per member.

    Options are checked when set, at construction or assignment: a ``top_n`` that is not a
    positive int (``True`` included), a ``score_threshold`` that is not a finite number (NaN
    would drop every document) or a label that never answers for the reranker raises
    ``ConfigurationError`` naming the adapter and the value. Pickling fails at once, with a
    ``TypeError`` naming the adapter, when the reranker cannot be pickled.
    """

    #: The adapter's name, in its errors and warnings.
    owner: ClassVar[str]

    if TYPE_CHECKING:
        reranker: Reranker
        top_n: int | None
        score_threshold: ScoreThreshold

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle state, refusing at once, with a message, when the reranker cannot be pickled."""
        refuse_unpicklable(self.owner, self.reranker)
        return cast("dict[Any, Any]", super().__getstate__())

    @field_validator("reranker")
    @classmethod
    def _check_reranker(cls, value: Reranker, info: ValidationInfo) -> Reranker:
        threshold_option(cls.owner, info.data.get("score_threshold"), value)
        return value

    @field_validator("top_n", mode="before")
    @classmethod
    def _check_top_n(cls, value: object) -> int | None:
        return top_n_option(cls.owner, value)

    @field_validator("score_threshold", mode="before")
    @classmethod
    def _check_threshold(cls, value: object, info: ValidationInfo) -> ScoreThreshold:
        return threshold_option(cls.owner, value, info.data.get("reranker"))

    def kept(self, response: RerankResponse, logger: logging.Logger) -> list[RerankResult]:
        """``kept_results`` of ``response`` under this adapter's ``score_threshold``."""
        return kept_results(response, self.score_threshold, owner=self.owner, logger=logger)
