"""What the LangChain and LlamaIndex adapters share, written once.

Their options checked (``top_n_option``, ``threshold_option``), which results a call keeps
(``kept_results``: ``score_threshold`` held to the scale of the reranker that answered), the
metadata keys and event summary of who answered (``answer_metadata``, ``response_summary``),
and the refusal to pickle an adapter whose reranker cannot be (``refuse_unpicklable``).
``adapter.py`` puts the checks on both adapters' pydantic models.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from typing import Any, TypeAlias

from milvus_rerank.core.base import Reranker, RerankResponse, describe_value
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.results import (
    RerankResult,
    checked_threshold,
    checked_top_n,
    scoring_at_least,
)
from milvus_rerank.wrappers.cache import CachedReranker
from milvus_rerank.wrappers.fallback import FallbackReranker

__all__ = [
    "RERANKED_BY_KEY",
    "RERANKED_KEY",
    "ScoreThreshold",
    "answer_metadata",
    "answering_labels",
    "check_threshold_labels",
    "kept_results",
    "refuse_unpicklable",
    "response_summary",
    "threshold_option",
    "top_n_option",
]

#: The metadata key of who answered: the reranker's label (``RerankResponse.answered_by``).
RERANKED_BY_KEY = "reranked_by"
#: The metadata key that is False when a fail-open ``FallbackReranker`` kept the input order.
RERANKED_KEY = "reranked"

#: ``score_threshold``: None, one number (held to the answers of the reranker's first choice),
#: or one per answering reranker's label (None: that reranker's answers are not thresholded).
ScoreThreshold: TypeAlias = float | dict[str, float | None] | None


def top_n_option(owner: str, value: object) -> int | None:
    """``value`` as an adapter's ``top_n``: a positive int or None.

    Raises:
        ConfigurationError: naming ``owner`` and the value.
    """
    return checked_top_n(value, what=f"{owner} top_n", error=ConfigurationError)


def threshold_option(owner: str, value: object, reranker: object = None) -> ScoreThreshold:
    """``value`` as an adapter's ``score_threshold``: a finite number, a mapping, or None.

    A mapping goes from a label that can answer (``answering_labels(reranker)``, checked when
    ``reranker`` is given) to a finite number or None.

    Raises:
        ConfigurationError: naming ``owner`` and the value (or the label).
    """
    what = f"{owner} score_threshold"
    if not isinstance(value, Mapping):
        return checked_threshold(value, what=what, error=ConfigurationError)
    checked: dict[str, float | None] = {}
    for label, threshold in value.items():
        if not isinstance(label, str) or not label:
            raise ConfigurationError(
                f"{what} keys must be reranker labels (answered_by), got {describe_value(label)}"
            )
        checked[label] = checked_threshold(
            threshold, what=f"{what}[{label!r}]", error=ConfigurationError
        )
    if isinstance(reranker, Reranker):
        check_threshold_labels(owner, checked, reranker)
    return checked


def answering_labels(reranker: Reranker) -> list[str]:
    """The labels a response of ``reranker`` can be ``answered_by``, first choice first.

    A ``FallbackReranker``'s members (those of nested chains included), what a
    ``CachedReranker`` wraps, or the reranker itself.
    """
    if isinstance(reranker, FallbackReranker):
        labels = (label for member in reranker.rerankers for label in answering_labels(member))
        return list(dict.fromkeys(labels))
    if isinstance(reranker, CachedReranker):
        return answering_labels(reranker.reranker)
    return [reranker.label]


def check_threshold_labels(owner: str, threshold: object, reranker: Reranker) -> None:
    """Refuse a per-label ``threshold`` naming a label that ``reranker`` never answers with.

    Raises:
        ConfigurationError: naming the label and the labels that can answer.
    """
    if not isinstance(threshold, Mapping):
        return
    labels = answering_labels(reranker)
    unknown = [label for label in threshold if label not in labels]
    if unknown:
        raise ConfigurationError(
            f"{owner} score_threshold names {unknown[0]!r}, which never answers for this "
            f"reranker; the labels that can answer are {labels}"
        )


def kept_results(
    response: RerankResponse, threshold: ScoreThreshold, *, owner: str, logger: logging.Logger
) -> list[RerankResult]:
    """The results a call keeps: those reaching the threshold of the reranker that answered.

    A number holds the answers of the reranker's first choice (no failure before it): an
    answer after failures comes from another reranker, on another scale, so it is cut by
    ``top_n`` alone, with a WARNING, rather than held to a number meant for another scale
    (which could keep nothing, or everything). A mapping gives each answering label its own
    threshold; a label it leaves out is cut by ``top_n`` alone, with a WARNING. An
    unreranked (fail-open) answer has no scores: nothing is thresholded.
    """
    if not response.reranked or threshold is None:
        return list(response.results)
    if isinstance(threshold, dict):
        if response.answered_by in threshold:
            return scoring_at_least(response.results, threshold[response.answered_by])
        logger.warning(
            "%s: score_threshold gives no threshold for %s, which answered; its %d results "
            "are cut by top_n alone",
            owner,
            response.answered_by,
            len(response.results),
        )
        return list(response.results)
    if not response.failures:
        return scoring_at_least(response.results, threshold)
    logger.warning(
        "%s: score_threshold %s not applied: %s answered after %d failure(s), on its own score "
        "scale; its %d results are cut by top_n alone (give it a threshold of its own with "
        "score_threshold={label: value})",
        owner,
        threshold,
        response.answered_by,
        len(response.failures),
        len(response.results),
    )
    return list(response.results)


def answer_metadata(response: RerankResponse) -> dict[str, Any]:
    """Who answered, under ``RERANKED_BY_KEY`` (the label) and ``RERANKED_KEY`` (reranked)."""
    return {RERANKED_BY_KEY: response.answered_by, RERANKED_KEY: response.reranked}


def response_summary(response: RerankResponse) -> dict[str, Any]:
    """Who answered, whether it reranked, the reported usage, the failures' error classes.

    ``usage`` holds the reported ``Usage`` fields only (``Usage.to_dict``); ``failures`` the
    class names of the errors of rerankers tried before the one that answered.
    """
    return {
        "answered_by": response.answered_by,
        "reranked": response.reranked,
        "usage": response.usage.to_dict(),
        "failures": [type(error).__name__ for error in response.failures],
    }


def refuse_unpicklable(owner: str, reranker: Reranker) -> None:
    """Raise at once, with a message, when an adapter's reranker cannot be pickled.

    Raises:
        TypeError: naming ``owner``, from the reranker's own error.
    """
    try:
        pickle.dumps(reranker)
    except Exception as exc:
        raise TypeError(f"{owner} cannot be pickled because its reranker cannot: {exc}") from exc
