"""``serve``'s batcher: requests (one query, its documents) scored in shared micro-batches.

Over a local runner a request is encoded in a worker thread and its rows, with their real
token counts, share the runner's forward passes; over any other reranker its pairs go to
``score_groups`` in micro-batches, or, for a reranker answering whole requests, one request
at a time (on the event loop, for a reranker with its own async path). Built on the
library's ``MicroBatcher``; ``stalled_for`` feeds ``/health``, ``on_batch`` the metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from milvus_rerank.app.serve.gate import AsyncGate
from milvus_rerank.app.serve.limits import UNKNOWN_WINDOW
from milvus_rerank.core.forks import after_fork
from milvus_rerank.core.results import Usage, bounded_count
from milvus_rerank.providers.local.batching import (
    MAX_BATCH_ITEMS,
    MAX_BATCH_TOKENS,
    MicroBatcher,
    Overloaded,
    RowRunner,
    spread,
    submit_prepared,
    unique_pairs,
)
from milvus_rerank.providers.local.runner_batching import runner_batcher

__all__ = [
    "REQUEST_WORKERS",
    "Overloaded",
    "RequestBatcher",
    "ScoreGroups",
    "ScorePairs",
    "ScoreRequest",
]

R = TypeVar("R")
ScorePairs = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
#: Scores of a micro-batch's requests, one (scorer, query, documents) group each, answered
#: with the group's scores and what scoring it consumed (None: nothing counted).
ScoreGroups = Callable[
    [Sequence[tuple[Any, str, Sequence[str]]]], Sequence[tuple[Sequence[float], Usage | None]]
]
#: One whole request's scores and usage from its scorer's own async path (scorer, query,
#: documents), awaited on the event loop that received the request.
ScoreRequest = Callable[[Any, str, Sequence[str]], Awaitable[tuple[list[float], Usage | None]]]

#: Whole requests a ``RequestBatcher`` scores at once by default (upstream calls wait on I/O).
REQUEST_WORKERS = 8


@dataclass(eq=False)
class _Request:
    """One request's query and the scorer it asked for (its rows share batches with others)."""

    scorer: Any
    query: str


class RequestBatcher:
    """Requests (one query, its documents) scored in shared micro-batches: ``serve``'s batcher.

    Over a local runner (``runner`` and ``family`` given) a request is encoded in a worker
    thread and its rows, with their real token counts, go through ``runner.forward``. Over
    anything else its pairs go through ``score_groups`` (each request's pairs of a micro-batch
    as one group, so what scoring them consumed is the request's own), or where that is not
    given through ``score_pairs`` in one call per micro-batch, nothing counted; a pair costs
    an estimate of ``cost``'s. One micro-batch holds at most ``max_pairs`` rows and
    ``max_tokens`` tokens; past ``max_pending`` rows waiting, ``score`` raises ``Overloaded``.
    Up to ``workers`` micro-batches run at once (None: the runner's ``batch_workers``, 2 on
    CPUs and 1 on GPUs; 1 over anything but a local runner).

    With ``whole_requests`` (no runner) a request is never cut nor batched with another: it is
    one ``score_groups`` group alone, so a scorer that may answer a call from one member of a
    fallback and the next from another ranks a request with one member's scores, and a
    request's failure is its own. Up to ``workers`` requests (None: ``REQUEST_WORKERS``, for
    an upstream API that waits on the network) are scored at once. A request whose scorer
    declares ``native_async`` is scored by ``score_request``, where given, on the event loop
    (its own async path, cancelled with the request), not in a worker thread.

    ``on_batch``, where set, is called with the rows of each micro-batch handed to the model
    (a whole request: its pairs), before it runs.
    """

    on_batch: Callable[[int], None] | None = None

    def __init__(
        self,
        score_pairs: ScorePairs,
        max_wait: float = 0.002,
        max_pairs: int = MAX_BATCH_ITEMS,
        *,
        max_tokens: int = MAX_BATCH_TOKENS,
        max_pending: int | None = None,
        window: int | None = None,
        runner: RowRunner | None = None,
        family: Any = None,
        score_groups: ScoreGroups | None = None,
        workers: int | None = None,
        whole_requests: bool = False,
        score_request: ScoreRequest | None = None,
    ) -> None:
        self.score_pairs = score_pairs
        self.score_groups = score_groups if score_groups is not None else self._pairs_groups
        self.score_request = score_request
        self.window = window or UNKNOWN_WINDOW
        self.runner = runner
        self.family = family
        self.whole_requests = whole_requests and runner is None
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._whole_pairs = 0  # pairs of whole requests queued or being scored
        self._encoding_pairs = 0  # pairs of requests being tokenized, not yet queued
        self._active = 0  # requests in score_counted
        self._busy = 0  # worker threads encoding or scoring (for abandoned requests too)
        self._async_answered = 0  # whole requests answered through score_request
        self._last_done = time.monotonic()  # a request answered, or the path woke from idle
        if self.whole_requests:
            default_workers = REQUEST_WORKERS
        elif runner is None:
            default_workers = 1
        else:  # as many as the runner's own shared batches (its batch_workers)
            default_workers = runner_batcher(runner).workers
        limits: dict[str, Any] = {
            "max_wait": max_wait,
            "max_items": 1 if self.whole_requests else max_pairs,
            "max_tokens": max_tokens,
            # Whole requests are bounded by their pairs here, not by the batcher's rows.
            "max_pending": None if self.whole_requests else max_pending,
            "name": "milvus-rerank-batcher-serve",
            "workers": workers if workers is not None else default_workers,
        }
        forward: Callable[[list[Any]], Sequence[Any]]
        if runner is not None:
            forward = runner.forward
        elif self.whole_requests:
            forward = self._score_requests
        else:
            forward = self._score_chunk
        self._batcher: MicroBatcher[Any, Any] = MicroBatcher(
            self._counted(self._observed(forward)), **limits
        )
        self._gate = AsyncGate(self._batcher.workers)
        _ALL.add(self)

    def forget_work(self) -> None:
        """In a forked child: the parent's requests and worker threads are not running here."""
        self._lock = threading.Lock()
        self._whole_pairs = self._encoding_pairs = self._active = self._busy = 0
        self._gate = AsyncGate(self._batcher.workers)
        self._last_done = time.monotonic()

    def _observed(self, forward: Callable[[list[Any]], R]) -> Callable[[list[Any]], R]:
        """``forward``, each micro-batch's rows (whole requests: pairs) told to ``on_batch``."""
        whole = self.whole_requests

        def run(items: list[Any]) -> R:
            if self.on_batch is not None:
                self.on_batch(sum(len(docs) for _, docs in items) if whole else len(items))
            return forward(items)

        return run

    def _counted(self, work: Callable[..., R]) -> Callable[..., R]:
        """``work``, run in a worker thread, counted as busy while it runs."""

        def run(*args: Any) -> R:
            with self._lock:
                self._busy += 1
            try:
                return work(*args)
            finally:
                with self._lock:
                    self._busy -= 1

        return run

    def prefer_oldest(self) -> None:
        """Serve requests oldest first, each whole, from now on (a draining server's order).

        ``MicroBatcher.prefer_oldest``: a plain assignment, safe in a signal handler.
        """
        self._batcher.prefer_oldest()

    @property
    def max_wait(self) -> float:
        """Seconds a batch waits for company while requests come together."""
        return self._batcher.max_wait

    @property
    def workers(self) -> int:
        """Micro-batches scored at once."""
        return self._batcher.workers

    @property
    def pending_pairs(self) -> int:
        """Pairs waiting for the model: being tokenized, or queued.

        Whole requests count until answered. ``milvus_rerank_queue_pairs`` shows it, so the
        gauge rises as requests arrive, not once their tokenization ends.
        """
        if self.whole_requests:
            return self._whole_pairs
        return self._encoding_pairs + self._batcher.pending

    @property
    def batches(self) -> int:
        """Model calls made so far (a whole request scored on the event loop: one)."""
        return self._batcher.batches + self._async_answered

    @property
    def requests(self) -> int:
        """Requests answered so far."""
        return self._batcher.requests + self._async_answered

    @property
    def active(self) -> int:
        """Requests being scored now (tokenizing, queued or in a forward pass)."""
        return self._active

    def stalled_for(self) -> float:
        """Seconds the scoring path has made no progress while it has work (0: none).

        Progress is a request answered (or failed) or a forward pass finished; a client
        leaving is none. The path has work while requests wait on it, or while a worker
        thread still encodes or scores (requests whose clients left included). Work that
        does not move for long means a worker is stuck (a deadlocked tokenizer in a forked
        worker, a hung device): ``serve``'s ``/health`` reports it.
        """
        with self._lock:
            if not self._active and not self._busy:
                return 0.0
            since = max(self._last_done, self._batcher.last_progress)
        return max(0.0, time.monotonic() - since)

    def cost(self, query: str, document: str) -> int:
        """Estimated tokens of a pair (where rows are not seen): 4 characters a token, 3 more."""
        return min(self.window, -(-(len(query) + len(document)) // 4) + 3)

    def _pairs_groups(
        self, groups: Sequence[tuple[Any, str, Sequence[str]]]
    ) -> list[tuple[list[float], Usage | None]]:
        """Every group's pairs in one ``score_pairs`` call (its scorer unused, nothing counted)."""
        sizes = [len(documents) for _, _, documents in groups]
        queries = [query for _, query, documents in groups for _ in documents]
        scores = list(self.score_pairs(queries, [d for _, _, docs in groups for d in docs]))
        if len(scores) != len(queries):
            raise RuntimeError(f"score_pairs returned {len(scores)} scores for {len(queries)}")
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [(scores[a : a + n], None) for a, n in zip(starts, sizes, strict=True)]

    def _score_requests(
        self, requests: list[tuple[_Request, Sequence[str]]]
    ) -> list[tuple[list[float], Usage | None]]:
        """Whole requests' scores and usage (one each: a micro-batch of one request)."""
        return self._answer_groups(requests)

    def _answer_groups(
        self, groups: Sequence[tuple[_Request, Sequence[str]]]
    ) -> list[tuple[list[float], Usage | None]]:
        """``score_groups`` over requests' documents, checked: a score per document, as floats."""
        answers = self.score_groups([(r.scorer, r.query, docs) for r, docs in groups])
        if len(answers) != len(groups):
            raise RuntimeError(f"score_groups answered {len(answers)} of {len(groups)} groups")
        out: list[tuple[list[float], Usage | None]] = []
        for (_, documents), (scores, usage) in zip(groups, answers, strict=True):
            if len(scores) != len(documents):
                raise RuntimeError(f"{len(scores)} scores for a group of {len(documents)} pairs")
            out.append(([float(s) for s in scores], usage))
        return out

    def _submit_whole(
        self, request: _Request, documents: list[str]
    ) -> concurrent.futures.Future[tuple[list[float], Usage | None]]:
        """Queue one request as one item, its cost its pairs' estimates, its pairs counted."""
        count = len(documents)
        self._hold_whole(count)
        cost = sum(self.cost(request.query, d) for d in documents)
        try:
            future = self._batcher.submit([(request, documents)], [cost], _whole_answer)
        except BaseException:
            self._done_whole(count)
            raise
        future.add_done_callback(lambda _: self._done_whole(count))
        return future

    def _hold_whole(self, count: int) -> None:
        """Count a whole request's pairs as waiting, unless that passes ``max_pending``."""
        with self._lock:
            # As MicroBatcher.check_room: a request of any size is let in while none waits.
            if self.max_pending is not None and self._whole_pairs:
                if self._whole_pairs + count > self.max_pending:
                    raise Overloaded(
                        f"{self._whole_pairs} pairs are already waiting to be scored (at most "
                        f"{self.max_pending}); retry later"
                    )
            self._whole_pairs += count

    def _done_whole(self, count: int) -> None:
        with self._lock:
            self._whole_pairs -= count

    async def _score_async(
        self,
        scorer: Any,
        query: str,
        documents: list[str],
        abandoned: asyncio.Future[Any] | None,
    ) -> tuple[list[float], Usage | None]:
        """A whole request through ``score_request`` on this loop, ``workers`` at once.

        ``abandoned`` completing cancels it (its scorer's call with it).
        """
        assert self.score_request is not None  # noqa: S101 - the caller checked
        task = asyncio.current_task()

        def drop(_: object) -> None:
            if task is not None:
                task.cancel()

        count = len(documents)
        self._hold_whole(count)
        if abandoned is not None:
            abandoned.add_done_callback(drop)
        try:
            async with self._gate:
                if self.on_batch is not None:
                    self.on_batch(count)
                found = await self.score_request(scorer, query, documents)
        finally:
            if abandoned is not None:
                abandoned.remove_done_callback(drop)
            self._done_whole(count)
        if len(found[0]) != count:
            raise RuntimeError(f"{len(found[0])} scores for a request of {count} documents")
        with self._lock:
            self._async_answered += 1
        return [float(s) for s in found[0]], found[1]

    def _score_chunk(self, pairs: list[tuple[_Request, str]]) -> list[tuple[float, Usage | None]]:
        """A micro-batch's scores, each request's usage on its first row there."""
        groups: list[tuple[_Request, list[str]]] = []
        for request, document in pairs:
            if groups and groups[-1][0] is request:
                groups[-1][1].append(document)
            else:
                groups.append((request, [document]))
        out: list[tuple[float, Usage | None]] = []
        for scores, usage in self._answer_groups(groups):
            out += [(s, usage if i == 0 else None) for i, s in enumerate(scores)]
        return out

    async def score(
        self,
        query: str,
        documents: list[str],
        *,
        abandoned: asyncio.Future[Any] | None = None,
        family: Any = None,
        scorer: Any = None,
    ) -> list[float]:
        """Scores of ``documents`` for ``query``, computed in shared batches (``score_counted``).

        Raises:
            Overloaded: more than ``max_pending`` rows would be waiting.
        """
        found = await self.score_counted(
            query, documents, abandoned=abandoned, family=family, scorer=scorer
        )
        return found[0]

    async def score_counted(
        self,
        query: str,
        documents: list[str],
        *,
        abandoned: asyncio.Future[Any] | None = None,
        family: Any = None,
        scorer: Any = None,
    ) -> tuple[list[float], Usage | None]:
        """Scores of ``documents`` for ``query``, and what scoring this request consumed.

        Over a runner the usage counts the tokens of this request's own rows (real tokens,
        every window, no padding); otherwise it sums what ``score_groups`` answered for this
        request's groups; None where nothing was counted (no documents, or ``score_pairs``).
        ``abandoned`` (e.g. a watcher of the client's disconnect) drops the rows not yet
        taken the moment it completes, before the worker can form another batch with them.
        ``family`` (over a runner) encodes this request another way than the batcher's own
        family, e.g. an instruction view's; ``scorer`` (otherwise) is handed to
        ``score_groups`` with this request's pairs. Either way its rows share batches.

        Raises:
            Overloaded: more than ``max_pending`` rows would be waiting.
        """
        if not documents:
            return [], None
        with self._lock:
            if not self._active and not self._busy:
                self._last_done = time.monotonic()  # an idle path has not stalled
            self._active += 1
        answered = False  # a client leaving (cancelled) or a refusal is no progress
        try:
            found = await self._score_counted(query, documents, abandoned, family, scorer)
            answered = True
            return found
        except Overloaded:
            raise
        except Exception:
            answered = True  # failed: answered all the same
            raise
        finally:
            with self._lock:
                self._active -= 1
                if answered:
                    self._last_done = time.monotonic()

    async def _score_counted(
        self,
        query: str,
        documents: list[str],
        abandoned: asyncio.Future[Any] | None,
        family: Any,
        scorer: Any,
    ) -> tuple[list[float], Usage | None]:
        runner = self.runner
        if self.whole_requests:
            if self.score_request is not None and getattr(scorer, "native_async", False):
                return await self._score_async(scorer, query, documents, abandoned)
            return await _until(self._submit_whole(_Request(scorer, query), documents), abandoned)
        if runner is None:
            request = _Request(scorer, query)
            pairs = self._batcher.submit(
                [(request, d) for d in documents],
                [self.cost(query, d) for d in documents],
                _scores_and_usage,
            )
            return await _until(pairs, abandoned)
        self._batcher.check_room(len(documents))  # before the work of encoding
        # Copies of a document are scored once, as ``LocalReranker`` scores them.
        queries, distinct, where = unique_pairs([query] * len(documents), documents)
        with self._lock:
            self._encoding_pairs += len(distinct)
        try:
            prepared = await asyncio.to_thread(
                self._counted(runner.prepare),
                queries,
                distinct,
                self.family if family is None else family,
            )
        finally:
            with self._lock:
                self._encoding_pairs -= len(distinct)
        scored = await _until(submit_prepared(self._batcher, runner, prepared), abandoned)
        scores, tokens = spread(scored, where)
        return scores, Usage(tokens=bounded_count(sum(tokens)))


#: Every batcher alive in this process, for the after-fork reset.
_ALL: weakref.WeakSet[RequestBatcher] = weakref.WeakSet()


@after_fork
def _after_fork() -> None:
    for batcher in list(_ALL):
        batcher.forget_work()


def _whole_answer(
    outputs: list[tuple[list[float], Usage | None]],
) -> tuple[list[float], Usage | None]:
    """A whole request's answer: its one item's scores and usage."""
    return outputs[0]


def _scores_and_usage(
    outputs: list[tuple[float, Usage | None]],
) -> tuple[list[float], Usage | None]:
    """A request's scores and the sum of the usage its groups reported (None: none did)."""
    total: Usage | None = None
    for _, usage in outputs:
        if usage is not None:
            total = usage if total is None else total + usage
    return [score for score, _ in outputs], total


async def _until(future: concurrent.futures.Future[R], abandoned: asyncio.Future[Any] | None) -> R:
    """``future``'s result; cancelled (its rows dropped) the moment ``abandoned`` completes."""
    if abandoned is not None:
        abandoned.add_done_callback(lambda _: future.cancel())
    return await asyncio.wrap_future(future)
