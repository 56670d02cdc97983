"""The values a reranker returns: each kept document, and what one call consumed."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from milvus_rerank.core.checks import describe_value

__all__ = [
    "MAX_USAGE_COUNT",
    "RerankResult",
    "Usage",
    "checked_threshold",
    "bounded_count",
    "checked_top_n",
    "copy_metadata",
    "scoring_at_least",
]

_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
#: The largest count a usage field may hold (a signed 64-bit int, what metrics systems store);
#: anything larger is no real count.
MAX_USAGE_COUNT = 2**63 - 1


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


def bounded_count(value: int | None) -> int | None:
    """``value``, or None past ``MAX_USAGE_COUNT``: a sum of counts is held to that bound too."""
    return None if value is None or value > MAX_USAGE_COUNT else value


def _add(a: int | None, b: int | None) -> int | None:
    return a if b is None else b if a is None else bounded_count(a + b)


@dataclass(frozen=True, slots=True)
class Usage:
    """What one rerank call consumed, summed over its HTTP chunks or forward batches.

    A field is None where the backend does not report it (TEI reports nothing, Cohere bills
    search units rather than tokens), never a guessed 0, and where a sum passes
    ``MAX_USAGE_COUNT`` (no real count: an int64 metrics exporter could not hold it).

    Attributes:
        tokens: Tokens scored: counted by local models (windows included), as reported by
            providers that report them (``total_tokens`` and the like).
        search_units: Cohere's billed search units (``meta.billed_units.search_units``).
        rerank_units: Pinecone's rerank units (``usage.rerank_units``).
        requests: HTTP requests that answered (chunks; retries not counted); 0 for local models.
    """

    tokens: int | None = None
    search_units: int | None = None
    rerank_units: int | None = None
    requests: int = 0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            tokens=_add(self.tokens, other.tokens),
            search_units=_add(self.search_units, other.search_units),
            rerank_units=_add(self.rerank_units, other.rerank_units),
            requests=self.requests + other.requests,
        )

    def to_dict(self) -> dict[str, int]:
        """The reported fields only (None left out), JSON-ready, for logs and callback metadata."""
        values = {
            "tokens": self.tokens,
            "search_units": self.search_units,
            "rerank_units": self.rerank_units,
            "requests": self.requests,
        }
        return {key: value for key, value in values.items() if value is not None}


def copy_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """An independent copy of a metadata dict (or a Milvus hit) for a returned document.

    Flat metadata of scalars (the usual case for vector-store hits) gets a plain dict copy;
    anything nested is deep-copied, so editing the result never reaches the caller's input.

    A value that cannot be deep-copied at all (a lock, a generator, an open file or client)
    is passed through by reference while the dicts, lists, tuples and sets around it are still
    copied: a RAG pipeline should not fail over metadata the reranker never reads, and such a
    value has no copy to give. Only those values are shared with the input.
    """
    if all(type(value) in _SCALARS for value in metadata.values()):
        return dict(metadata)
    try:
        return _copied_dict(metadata, copy.deepcopy)
    except Exception:  # noqa: BLE001 - any value deepcopy refuses is shared, as documented
        return _copied_dict(metadata, _copy_parts)


def _copied_dict(
    metadata: Mapping[str, Any], copy_value: Callable[[Any, dict[int, Any]], Any]
) -> dict[str, Any]:
    """A new dict of copied values; a value that refers back to ``metadata`` gets the new dict."""
    out: dict[str, Any] = {}
    memo: dict[int, Any] = {id(metadata): out}  # a fresh memo: no half-built copy is reused
    for key, value in metadata.items():
        out[key] = copy_value(value, memo)
    return out


def _copy_parts(value: Any, memo: dict[int, Any]) -> Any:
    """Deep-copy ``value`` through builtin containers, sharing what cannot be deep-copied."""
    if type(value) in _SCALARS:
        return value
    if id(value) in memo:
        return memo[id(value)]
    kind = type(value)
    out: Any
    if kind is dict:
        out = memo[id(value)] = {}
        out.update((key, _copy_parts(item, memo)) for key, item in value.items())
        return out
    if kind is list:
        out = memo[id(value)] = []
        out.extend(_copy_parts(item, memo) for item in value)
        return out
    if kind in (tuple, set, frozenset):
        return kind(_copy_parts(item, memo) for item in value)
    try:
        out = copy.deepcopy(value)  # a fresh memo: a failed attempt leaves no half-built copy
    except Exception:  # noqa: BLE001 - a lock, a generator...: shared by reference
        out = value
    memo[id(value)] = out
    return out


def checked_top_n(value: object, *, what: str, error: type[Exception]) -> int | None:
    """``value`` as a ``top_n``: a positive int or None (bools are not ints here).

    Raises:
        error: naming ``what`` and the value.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise error(f"{what} must be a positive int or None, got {describe_value(value)}")
    return int(value)


def checked_threshold(value: object, *, what: str, error: type[Exception]) -> float | None:
    """``value`` as a score threshold: a finite real number or None.

    A NaN threshold would drop every document (no score reaches NaN), and a bool or a
    string is a mistake, so they are rejected rather than silently returning nothing.

    Raises:
        error: naming ``what`` and the value.
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
    ):
        raise error(f"{what} must be a finite number or None, got {describe_value(value)}")
    return float(value)


def scoring_at_least(
    results: Iterable[RerankResult], threshold: float | None
) -> list[RerankResult]:
    """The results whose score reaches ``threshold``, in order (all of them when it is None)."""
    if threshold is None:
        return list(results)
    return [result for result in results if result.score >= threshold]
