"""``serve``'s request handlers: plain functions over the app's ``ServeState``.

``handle`` answers a rank request in its route's wire format: key and origin checks, the body
read within its size and time limits and parsed within its bounds, the format's options, the
request's scores from the batcher (dropped if the client leaves), the ranked answer, each
refusal counted; while the server drains, 503. ``health`` answers ``GET /health``,
``metrics`` ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from milvus_rerank.app.serve.access import check_auth, check_origin
from milvus_rerank.app.serve.batcher import Overloaded
from milvus_rerank.app.serve.drain import Cut
from milvus_rerank.app.serve.failures import ClientGone, HTTPError, failure_answer
from milvus_rerank.app.serve.formats import VLLM, Asked, Ranked, WireFormat
from milvus_rerank.app.serve.instructions import scorer_for
from milvus_rerank.app.serve.limits import CONTAINERS_PER_DOCUMENT, EXTRA_CONTAINERS
from milvus_rerank.app.serve.state import ServeState
from milvus_rerank.core.base import Reranker, rank, validate_request
from milvus_rerank.core.checks import json_containers
from milvus_rerank.core.errors import InvalidInputError
from milvus_rerank.core.results import Usage
from milvus_rerank.providers.local.reranker import LocalReranker

__all__ = ["handle", "health", "metrics", "parse_body", "read_body"]

#: ``Retry-After`` of a draining server's 503: another instance can answer at once.
DRAINING_RETRY = "1"


async def read_body(state: ServeState, request: Request) -> bytes:
    """The request body, refused past ``max_body_bytes`` (413) or ``body_timeout`` (408)."""
    limit, timeout = state.limits.max_body_bytes, state.limits.body_timeout
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPError(413, f"the request body has {int(length)} bytes; at most {limit}")
    body = bytearray()

    async def collect() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise HTTPError(413, f"the request body is over {limit} bytes; at most that")

    try:
        await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        raise HTTPError(408, f"the request body did not arrive within {timeout:g} s") from None
    except ClientDisconnect:
        raise ClientGone from None
    return bytes(body)


def parse_body(state: ServeState, raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, its arrays and objects bounded before it is parsed."""
    # json.loads holds the GIL throughout, in a thread too: bound its work before it runs.
    bound = state.limits.max_containers
    containers = json_containers(raw, bound)
    if containers > bound:
        raise HTTPError(
            400,
            f"the request body holds {containers} JSON arrays and objects; at most "
            f"{bound} ({CONTAINERS_PER_DOCUMENT} a document of max_documents, "
            f"plus {EXTRA_CONTAINERS})",
        )
    try:
        body = json.loads(raw)
    except RecursionError:
        raise HTTPError(400, "the request body is JSON nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPError(400, "the request body is not JSON") from None
    except ValueError:  # valid JSON: an integer past Python's int-string limit
        raise HTTPError(
            400,
            "the request body holds an integer of more than "
            f"{sys.get_int_max_str_digits()} digits, longer than this server reads",
        ) from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    return body


async def _until_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _scores(
    state: ServeState,
    request: Request,
    fmt: WireFormat,
    scorer: Reranker,
    query: str,
    documents: list[str],
) -> tuple[list[float], Usage | None]:
    """The batcher's scores and usage, unless the client leaves first (its work dropped)."""
    cut = [d[: state.max_chars] for d in documents]
    gone = asyncio.ensure_future(_until_gone(request))
    # One path for the reranker and a request's instruction view: the runner encodes the
    # rows with the scorer's family, anything else scores them with the scorer itself.
    family = (
        scorer.family if state.local is not None and isinstance(scorer, LocalReranker) else None
    )
    work = asyncio.ensure_future(
        state.batcher.score_counted(query, cut, abandoned=gone, family=family, scorer=scorer)
    )
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
    if not work.done() or work.cancelled():
        raise ClientGone
    try:
        return work.result()
    except Overloaded as exc:
        raise HTTPError(429, str(exc), {"Retry-After": "1"}, reason="overloaded") from None
    except Exception as exc:
        raise failure_answer(
            exc, state.reranker.provider, fmt.invalid_status, state.upstreams
        ) from None


async def _ranked(state: ServeState, request: Request, fmt: WireFormat, asked: Asked) -> Ranked:
    """The request checked, scored and ranked."""
    documents, most = asked.documents, state.limits.max_documents
    if isinstance(documents, list) and len(documents) > most:
        raise HTTPError(
            422,
            f"documents holds {len(documents)} items; at most {most} a request",
            reason="too_many_documents",
        )
    status = fmt.invalid_status
    try:
        query, docs, top_n = validate_request(asked.query, _texts(documents), asked.top_n)
    except InvalidInputError as exc:
        raise HTTPError(status, str(exc)) from None
    scorer = scorer_for(state.reranker, state.views, asked.instruction, status)
    if not docs:
        return Ranked([], 0, 0, None)
    keep = state.max_chars
    found, usage = await _scores(state, request, fmt, scorer, query[:keep], docs)
    state.metrics.scored(len(docs), usage)
    results = rank(docs, found, top_n, provider=state.reranker.provider)
    return Ranked(results, len(docs), sum(min(len(d), keep) for d in docs), usage)


def _texts(documents: object) -> object:
    """Cohere and Jina also accept documents as ``{"text": ...}`` objects."""
    if isinstance(documents, list):
        return [
            d["text"] if isinstance(d, dict) and isinstance(d.get("text"), str) else d
            for d in documents
        ]
    return documents


def _busy(state: ServeState) -> HTTPError:
    most = state.limits.max_concurrent_requests
    return HTTPError(
        429,
        f"{state.active} requests are being served (at most {most}); retry later",
        {"Retry-After": "1"},
        reason="overloaded",
    )


async def _answer(
    state: ServeState, request: Request, fmt: WireFormat, body: dict[str, Any]
) -> Response:
    asked = fmt.parse(body, state.window, state.max_chars)
    ranked = await _ranked(state, request, fmt, asked)
    content, headers = fmt.answer(asked, ranked, state.served_name)
    return JSONResponse(content, headers=headers)


def _draining(state: ServeState, fmt: WireFormat, cut: bool) -> Response:
    """503 in ``fmt``'s shape: the server is stopping (``cut``: this request ran out of time)."""
    state.metrics.refused(503, "draining")
    what = "the server is stopping"
    if cut:
        grace = state.limits.graceful_timeout
        what += f" and did not finish this request in time (grace {grace:g} s)"
    headers = {"Retry-After": DRAINING_RETRY, "Connection": "close"}
    content = fmt.error(503, f"{what}; retry on another instance")
    return JSONResponse(content, status_code=503, headers=headers)


async def handle(state: ServeState, route: WireFormat, request: Request) -> Response:
    """Answer one rank request on a route of format ``route`` (which may pick by the body).

    While the server drains it is refused 503; one still running when the drain cuts is
    answered 503 in the shape of the format its body picked.
    """
    drain = state.drain
    if drain.draining:
        drain.note_refused()
        return _draining(state, route, cut=False)
    picked = [route]
    try:
        return await drain.guard(_handle(state, route, request, picked), _served)
    except Cut:
        drain.note_cut()
        return _draining(state, picked[0], cut=True)


def _served(response: Response) -> bool:
    """Whether a rank request was answered whole (a 2xx), for the drain's summary."""
    return 200 <= response.status_code < 300


async def _handle(
    state: ServeState, route: WireFormat, request: Request, picked: list[WireFormat]
) -> Response:
    """``handle``'s work; ``picked[0]`` is set to the format the body picks."""
    fmt = route
    try:
        check_auth(state, request)
        check_origin(state, request)
        if state.active >= state.limits.max_concurrent_requests:
            raise _busy(state)  # before the upload, when it is sure to be refused
        body = parse_body(state, await read_body(state, request))
        if state.active >= state.limits.max_concurrent_requests:
            raise _busy(state)  # only requests with their body in hold a slot
        state.active += 1
        try:
            fmt = picked[0] = route.pick(body)
            return await _answer(state, request, fmt, body)
        finally:
            state.active -= 1
    except HTTPError as exc:
        state.metrics.refused(exc.status, exc.reason)
        content = fmt.error(exc.status, str(exc))
        return JSONResponse(content, status_code=exc.status, headers=exc.headers)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it: the client left
    except Exception as exc:  # a bug: the route's shape all the same, one log line
        error = failure_answer(exc, state.reranker.provider, fmt.invalid_status, state.upstreams)
        state.metrics.refused(error.status, error.reason)
        return JSONResponse(fmt.error(error.status, str(error)), status_code=error.status)


async def health(state: ServeState, request: Request) -> Response:
    """``GET /health``: ok; 503 while draining, or while scoring makes no progress."""
    try:
        check_origin(state, request, with_body=False)
    except HTTPError as exc:
        return JSONResponse(VLLM.error(exc.status, str(exc)), exc.status)
    if state.drain.draining:
        return JSONResponse(
            {"status": "draining", "model": state.served_name},
            status_code=503,
            headers={"Retry-After": DRAINING_RETRY, "Connection": "close"},
        )
    stalled = state.batcher.stalled_for()
    if stalled > state.limits.stall_after:  # requests wait on a scoring path that does not move
        return JSONResponse(
            {
                "status": "stalled",
                "model": state.served_name,
                "waiting_requests": state.batcher.active,
                "seconds_without_progress": round(stalled, 1),
            },
            status_code=503,
        )
    return JSONResponse({"status": "ok", "model": state.served_name})


async def metrics(state: ServeState, request: Request) -> Response:
    """``GET /metrics``: the app's metrics in the Prometheus text format (no key needed)."""
    try:
        check_origin(state, request, with_body=False)
    except HTTPError as exc:
        return JSONResponse(VLLM.error(exc.status, str(exc)), exc.status)
    content, media_type = state.metrics.render()
    return Response(content, headers={"Content-Type": media_type})
