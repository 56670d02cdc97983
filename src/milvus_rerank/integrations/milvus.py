"""Reranking on Milvus: client-side over ``MilvusClient.search`` hits, or server-side Functions."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from milvus_rerank.core.base import MilvusTarget, Reranker, describe_value
from milvus_rerank.core.errors import ConfigurationError, InvalidInputError, MissingDependencyError
from milvus_rerank.core.results import checked_top_n, copy_metadata

__all__ = ["arerank_hits", "rerank_hits", "server_side_params", "server_side_ranker"]

_MAX_PARALLEL_QUERIES = 8
_TARGETS: tuple[MilvusTarget, ...] = ("milvus", "milvus-lite")


def _hit_id(hit: Mapping[str, Any]) -> Any:
    """The primary key of a hit, whatever the primary field is called."""
    pk = getattr(hit, "id", None)
    if pk is None:
        pk = hit.get("id", hit.get("pk"))
    return pk


def _hit_text(hit: object, text_field: str, query_index: int, position: int) -> str:
    if not isinstance(hit, Mapping):
        raise InvalidInputError(
            f"results[{query_index}][{position}] must be a Milvus hit (a dict), "
            f"got {describe_value(hit)}"
        )
    entity = hit.get("entity")
    source = entity if isinstance(entity, Mapping) and text_field in entity else hit
    if text_field not in source:
        raise InvalidInputError(
            f"hit id={_hit_id(hit)!r} (results[{query_index}][{position}]) has no {text_field!r} "
            f"field; add it to output_fields=[{text_field!r}] of the search"
        )
    text = source[text_field]
    if not isinstance(text, str):
        raise InvalidInputError(
            f"hit id={_hit_id(hit)!r} (results[{query_index}][{position}]) field {text_field!r} "
            f"must be a str, got {describe_value(text)}"
        )
    return text


def _prepare(
    queries: str | Sequence[str],
    results: Sequence[Sequence[Any]],
    text_field: str,
    top_n: object,
    score_field: str,
) -> tuple[list[str], list[list[Any]], list[list[str]], int | None]:
    """Check a ``rerank_hits`` call up front; return the queries, hit lists, texts and top_n."""
    top_n = checked_top_n(top_n, what="top_n", error=InvalidInputError)
    for name, value in (("text_field", text_field), ("score_field", score_field)):
        if not isinstance(value, str) or not value:
            raise InvalidInputError(f"{name} must be a field name, got {describe_value(value)}")
    if isinstance(queries, str):
        queries = [queries]
    if isinstance(results, (str, bytes, Mapping)) or not isinstance(results, Sequence):
        raise InvalidInputError(
            f"results must be what MilvusClient.search returns (one hit list per query), "
            f"got {describe_value(results)}"
        )
    if isinstance(queries, Mapping) or not isinstance(queries, Sequence):
        raise InvalidInputError(
            f"queries must be a str or a list of str, got {describe_value(queries)}"
        )
    if len(queries) != len(results):
        raise InvalidInputError(
            f"got {len(queries)} queries for {len(results)} hit lists; search returns one hit "
            "list per query vector, so pass the queries in the same order"
        )
    hit_lists: list[list[Any]] = []
    texts: list[list[str]] = []
    for q, hits in enumerate(results):
        if isinstance(hits, (str, bytes, Mapping)) or not isinstance(hits, Sequence):
            raise InvalidInputError(
                f"results[{q}] must be a list of hits, got {describe_value(hits)}"
            )
        hit_list = list(hits)
        hit_lists.append(hit_list)
        texts.append([_hit_text(hit, text_field, q, i) for i, hit in enumerate(hit_list)])
    return list(queries), hit_lists, texts, top_n


def _reordered(hits: list[Any], ranked: Sequence[Any], score_field: str) -> list[dict[str, Any]]:
    """New hits in ``ranked`` order, sharing nothing mutable with ``hits`` (see copy_metadata)."""
    out = []
    for result in ranked:
        hit = copy_metadata(hits[result.index])
        hit[score_field] = result.score
        out.append(hit)
    return out


def rerank_hits(
    reranker: Reranker,
    queries: str | Sequence[str],
    results: Sequence[Sequence[Any]],
    *,
    text_field: str = "text",
    top_n: int | None = None,
    score_field: str = "rerank_score",
) -> list[list[dict[str, Any]]]:
    """Rerank what ``MilvusClient.search`` / ``hybrid_search`` returned, one hit list per query.

    Each hit comes back as a new dict, best first, with Milvus's ``id``, ``distance`` and
    ``entity`` kept and the rerank score added under ``score_field``. The text is read from
    ``hit["entity"][text_field]`` (include it in ``output_fields``). The input is not mutated,
    and the returned hits share nothing mutable with it: nested entity values (lists, dicts)
    are deep-copied; only a value that cannot be copied at all (a lock, a generator) is
    passed through by reference (see ``results.copy_metadata``). No queries give ``[]``.
    Several queries are reranked concurrently (up to 8 threads; ``arerank_hits`` for asyncio).

    Raises:
        InvalidInputError: a hit without a string ``text_field`` (named by its id), a
            different number of queries and hit lists, or a ``top_n`` that is not a positive
            int (bools included), all before any reranking.
    """
    queries, hit_lists, texts, top_n = _prepare(queries, results, text_field, top_n, score_field)

    def one(i: int) -> list[dict[str, Any]]:
        return _reordered(
            hit_lists[i], reranker.rerank(queries[i], texts[i], top_n=top_n), score_field
        )

    if len(queries) <= 1:
        return [one(i) for i in range(len(queries))]
    with ThreadPoolExecutor(max_workers=min(_MAX_PARALLEL_QUERIES, len(queries))) as pool:
        return list(pool.map(one, range(len(queries))))


async def arerank_hits(
    reranker: Reranker,
    queries: str | Sequence[str],
    results: Sequence[Sequence[Any]],
    *,
    text_field: str = "text",
    top_n: int | None = None,
    score_field: str = "rerank_score",
) -> list[list[dict[str, Any]]]:
    """Async ``rerank_hits``: the queries' reranks run concurrently."""
    queries, hit_lists, texts, top_n = _prepare(queries, results, text_field, top_n, score_field)
    ranked = await asyncio.gather(
        *(reranker.arerank(q, t, top_n=top_n) for q, t in zip(queries, texts, strict=True))
    )
    return [_reordered(h, r, score_field) for h, r in zip(hit_lists, ranked, strict=True)]


def server_side_params(
    reranker: Reranker,
    queries: str | Sequence[str],
    *,
    target: str = "milvus",
    credential: str | None = None,
) -> dict[str, Any]:
    """The ``params`` of a Milvus model-rerank Function built from ``reranker``'s configuration.

    ``target="milvus"`` is a Milvus 2.6+ server, ``target="milvus-lite"`` embedded Milvus Lite.
    What Milvus calls and with which settings is the reranker's own answer
    (``Reranker.milvus_function_params``); this adds ``reranker: "model"`` and the queries.
    Keys never go into a server's params: name a credential of its ``milvus.yaml`` with
    ``credential``.

    Raises:
        InvalidInputError: ``queries`` is not one non-empty string per search query.
        ConfigurationError: an unknown target, or a reranker Milvus cannot call there.
    """
    query_list = [queries] if isinstance(queries, str) else list(queries)
    if not query_list or not all(isinstance(q, str) and q.strip() for q in query_list):
        raise InvalidInputError(
            f"queries must be one non-empty str per search query, got {describe_value(queries)}"
        )
    checked = next((t for t in _TARGETS if t == target), None)
    if checked is None:
        raise ConfigurationError(f"target must be 'milvus' or 'milvus-lite', got {target!r}")
    params = reranker.milvus_function_params(checked, credential=credential)
    return {"reranker": "model", "queries": query_list, **params}


def server_side_ranker(
    reranker: Reranker,
    queries: str | Sequence[str],
    *,
    input_field: str = "text",
    target: str = "milvus",
    credential: str | None = None,
    name: str = "rerank",
) -> Any:
    """A ``pymilvus.Function`` for ``search(..., ranker=...)`` that makes Milvus rerank itself.

    ``queries`` holds one query text per search query; ``input_field`` is the VARCHAR field
    Milvus sends as documents (it must be in ``output_fields``). See ``server_side_params``.

    Example:
        >>> ranker = server_side_ranker(reranker, [query])  # doctest: +SKIP
        >>> client.search(  # doctest: +SKIP
        ...     "docs", data=[vector], output_fields=["text"], ranker=ranker)
    """
    try:
        from pymilvus import Function, FunctionType
    except ImportError as exc:
        raise MissingDependencyError("server_side_ranker", "milvus", "pymilvus") from exc
    if not isinstance(input_field, str) or not input_field:
        raise ConfigurationError(f"input_field must be a field name, got {input_field!r}")
    params = server_side_params(reranker, queries, target=target, credential=credential)
    return Function(
        name=name,
        input_field_names=[input_field],
        function_type=FunctionType.RERANK,
        params=params,
    )
