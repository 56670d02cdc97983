"""The value a reranker returns for each kept document."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RerankResult", "copy_metadata", "scoring_at_least"]

_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


@dataclass(frozen=True, slots=True)
class RerankResult:
    """One reranked document.

    The field names match pymilvus-model's ``RerankResult``, so code that reads
    ``result.text``, ``result.score`` and ``result.index`` keeps working.

    Attributes:
        index: Position of the document in the list given to ``rerank``.
        score: Relevance score (higher is more relevant), a plain Python ``float``.
        text: The document text, as given.
    """

    index: int
    score: float
    text: str

    def to_dict(self) -> dict[str, object]:
        """The result as a JSON-ready dict."""
        return {"index": self.index, "score": self.score, "text": self.text}


def copy_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """An independent copy of a metadata dict for a returned document.

    Flat metadata of scalars (the usual case for vector-store hits) gets a plain dict copy;
    anything nested is deep-copied, so editing the result never reaches the caller's input.
    """
    if all(type(value) in _SCALARS for value in metadata.values()):
        return dict(metadata)
    return copy.deepcopy(dict(metadata))


def scoring_at_least(
    results: Iterable[RerankResult], threshold: float | None
) -> list[RerankResult]:
    """The results whose score reaches ``threshold``, in order (all of them when it is None)."""
    if threshold is None:
        return list(results)
    return [result for result in results if result.score >= threshold]
