"""What an API answer reports it consumed, read without ever failing a ranking.

``usage_count`` reads one documented count (None where it is absent or malformed, logged at
DEBUG by field name and type only); ``header_count`` does so for a count sent in a header;
``call_usage`` sums a call's chunks, a field only when every chunk reported it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from milvus_rerank.core.results import MAX_USAGE_COUNT, Usage, bounded_count

__all__ = ["MAX_USAGE_COUNT", "call_usage", "header_count", "usage_count"]

logger = logging.getLogger("milvus_rerank.http")


def usage_count(provider: str, body: Any, *path: str) -> int | None:
    """The count at ``body[path[0]][path[1]]...``, or None where it is absent or null.

    A value that is no count (a string, a bool, a negative or fractional number, one past
    ``MAX_USAGE_COUNT``) is None too: usage never fails a ranking. It is logged at DEBUG
    by its field name and type only, never its value (server text could echo a key).
    """
    value = body
    for depth, key in enumerate(path):
        if not isinstance(value, dict):
            if depth and value is not None:
                _bad_usage(provider, path[:depth], value)
            return None
        value = value.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        _bad_usage(provider, path, value)
        return None
    if not 0 <= value <= MAX_USAGE_COUNT:
        _bad_usage(provider, path, value, "out of range")
        return None
    return value


def _bad_usage(provider: str, path: Sequence[str], value: object, why: str = "not a count") -> None:
    logger.debug(
        "%s: usage field %s ignored: %s (%s)", provider, ".".join(path), why, type(value).__name__
    )


def header_count(provider: str, name: str, header: str | None) -> int | None:
    """The count a response header ``name`` reports (digits only), as ``usage_count`` reads it."""
    text = (header or "").strip()
    # Digits only (at most 19, the size of a count): anything else is no count.
    value = int(text) if text.isascii() and text.isdigit() and len(text) < 20 else text or None
    return usage_count(provider, {name: value}, name)


def call_usage(usages: Sequence[Usage]) -> Usage:
    """A call's ``Usage`` over its chunks' answers, one request each.

    A field is the sum over the chunks only when every chunk reported it; otherwise None, since
    a partial sum would pass for the whole call's count.
    """

    def total(values: list[int | None]) -> int | None:
        if any(v is None for v in values):
            return None
        return bounded_count(sum(v for v in values if v is not None))

    return Usage(
        tokens=total([u.tokens for u in usages]),
        search_units=total([u.search_units for u in usages]),
        rerank_units=total([u.rerank_units for u in usages]),
        requests=sum(u.requests for u in usages),
    )
