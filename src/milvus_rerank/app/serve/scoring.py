"""How ``serve``'s batcher scores a micro-batch of requests over a reranker that is not local.

Each request goes to its scorer (the served reranker, or its instruction view) as its
``batching`` capability says: whole through ``rerank_response`` (its usage its own; a scorer
declaring ``native_async``: ``arerank_response``, on the event loop), or with the other
requests of that scorer in one ``score_pairs`` call (counting nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

from milvus_rerank.core.base import Reranker, RerankResponse
from milvus_rerank.core.errors import InvalidResponseError
from milvus_rerank.core.results import Usage
from milvus_rerank.wrappers.fallback import unreranked_error

__all__ = ["aresponse_scores", "response_scores", "score_groups"]


def response_scores(
    scorer: Reranker, query: str, documents: Sequence[str]
) -> tuple[list[float], Usage]:
    """One request's scores, in order, and the ``Usage`` its ``rerank_response`` reported."""
    return _in_order(scorer, scorer.rerank_response(query, documents), documents)


async def aresponse_scores(
    scorer: Reranker, query: str, documents: Sequence[str]
) -> tuple[list[float], Usage | None]:
    """``response_scores`` through the scorer's own async path (``arerank_response``)."""
    return _in_order(scorer, await scorer.arerank_response(query, documents), documents)


def _in_order(
    scorer: Reranker, response: RerankResponse, documents: Sequence[str]
) -> tuple[list[float], Usage]:
    """A response's scores in the documents' order, each document answered once."""
    if not response.reranked:  # a fail-open fallback has no scores to give
        raise unreranked_error(response)
    scores: list[float | None] = [None] * len(documents)
    for result in response.results:
        if 0 <= result.index < len(scores) and scores[result.index] is None:
            scores[result.index] = result.score
    if any(score is None for score in scores) or len(response.results) != len(documents):
        raise InvalidResponseError(
            f"{scorer.label} answered {len(response.results)} results that are not each of "
            f"the {len(documents)} documents once",
            provider=scorer.provider,
        )
    return [float(score) for score in scores if score is not None], response.usage


def score_groups(
    groups: Sequence[tuple[Reranker, str, Sequence[str]]],
) -> list[tuple[list[float], Usage | None]]:
    """Each request's scores and usage in one micro-batch: ``serve``'s pairs path.

    A request whose scorer answers whole (``batching == "whole"``) goes through its
    ``rerank_response``; the requests of a scorer with its own batched ``score_pairs`` go
    through one call of it, counting nothing.
    """
    answers: list[tuple[list[float], Usage | None] | None] = [None] * len(groups)
    batched: dict[int, list[int]] = {}
    for i, (scorer, query, documents) in enumerate(groups):
        if scorer.batching == "whole":
            answers[i] = response_scores(scorer, query, documents)
        else:
            batched.setdefault(id(scorer), []).append(i)
    for places in batched.values():
        scorer = groups[places[0]][0]
        queries = [groups[i][1] for i in places for _ in groups[i][2]]
        scores = scorer.score_pairs(queries, [d for i in places for d in groups[i][2]])
        if len(scores) != len(queries):
            raise InvalidResponseError(
                f"{scorer.label} returned {len(scores)} scores for {len(queries)} pairs",
                provider=scorer.provider,
            )
        start = 0
        for i in places:
            end = start + len(groups[i][2])
            answers[i] = ([float(s) for s in scores[start:end]], None)
            start = end
    return [answer for answer in answers if answer is not None]
