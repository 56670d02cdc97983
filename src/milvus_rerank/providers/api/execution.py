"""How one rerank call runs: chunks, request slots, the retry loop and the deadline, once.

Sync and async calls both run ``Call.score`` (a sync call on the private loop, see
``clients.run_sync``); they differ only in the ``Exchange`` that does the I/O. A call sends
its chunks at once (at most ``max_concurrency`` requests in flight per reranker), retries each
as its ``RetryPolicy`` decides, ends at the policy's ``deadline`` whatever the server does, and
on the first chunk that fails for good cancels the others. Answers are merged by index.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx

from milvus_rerank.core.errors import ConfigurationError, ProviderError, ProviderUnavailableError
from milvus_rerank.core.results import Usage
from milvus_rerank.core.retry import FailedAttempt, RetryPolicy
from milvus_rerank.providers.api.answers import Answer, AnswerReader, Failed
from milvus_rerank.providers.api.body import BodyReader
from milvus_rerank.providers.api.exchange import Exchange, Outgoing
from milvus_rerank.providers.api.slots import RequestSlots
from milvus_rerank.providers.api.usage import call_usage

__all__ = ["Call", "Plan", "gather_or_cancel", "wait_within"]

logger = logging.getLogger("milvus_rerank.http")

_T = TypeVar("_T")

#: Answers larger than this are parsed in a worker thread, off the event loop.
_OFF_LOOP_BYTES = 256 * 2**10


@dataclass(frozen=True)
class Plan:
    """What every request of one call shares, read from its reranker when the call starts.

    Attributes:
        provider: The provider's name, for messages.
        url: Where each request goes.
        headers: Each request's headers, the key among them: left out of the repr (a
            traceback printed with its locals shows ``plan``).
        payload: The provider's hook: the JSON body for a query and documents.
        reader: Reads and validates the answers.
        timeout: Seconds for one request.
        retry: When to retry, and the whole call's deadline.
        max_batch: Documents per request (None: all in one).
        max_concurrency: Requests in flight at once per reranker.
        max_response_bytes: The cap on a decoded answer.
        slots: The reranker's bound on requests in flight.
        closed: Whether the reranker was closed since the call started.
    """

    provider: str
    url: str
    headers: dict[str, str] = field(repr=False)
    payload: Callable[[str, list[str]], dict[str, Any]]
    reader: AnswerReader
    timeout: float
    retry: RetryPolicy
    max_batch: int | None
    max_concurrency: int
    max_response_bytes: int
    slots: RequestSlots
    closed: Callable[[], bool]


class Call:
    """One call: its chunks' requests over ``exchange``, within one deadline."""

    def __init__(self, plan: Plan, exchange: Exchange) -> None:
        self.plan = plan
        self.exchange = exchange
        self.started = time.monotonic()
        self.deadline = self.started + plan.retry.deadline
        self.failed = False  # a chunk failed for good: the call fails with its error

    async def score(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        """Every document's score, in input order, and what the answers report they used."""
        plan = self.plan
        size = plan.max_batch or len(documents)
        chunks = [(at, documents[at : at + size]) for at in range(0, len(documents), size)]
        answers = await gather_or_cancel(
            [self.request(plan.payload(query, chunk), len(chunk)) for _, chunk in chunks]
        )
        scores = [math.nan] * len(documents)
        for (start, chunk), answer in zip(chunks, answers, strict=True):
            plan.reader.merge(scores, start, len(chunk), answer.body)
        return scores, call_usage([plan.reader.usage(answer) for answer in answers])

    # No error is raised inside an ``except`` block: it would keep the caught exception as its
    # ``__context__`` (an httpx error whose ``.request`` holds the key in its headers),
    # reachable by any code walking the chain.

    async def request(self, payload: dict[str, Any], count: int) -> Answer:
        """One chunk's answer: a slot taken, then attempts until one answers or it gives up.

        Once a chunk of the call failed for good, the others stop before their next attempt
        (as cancelled): even one that its slot reached in the loop turn the call failed.
        """
        slots = self.plan.slots
        try:
            if not await slots.acquire(self._remaining()):
                raise self._deadline_failure("waiting for a free request slot").build(
                    f"max_concurrency={self.plan.max_concurrency}"
                )
            try:
                return await self._attempts(payload, count)
            finally:
                slots.release()
        except Exception:
            self.failed = True
            raise

    async def _attempts(self, payload: dict[str, Any], count: int) -> Answer:
        retries = 0
        while True:
            if self.failed:
                raise asyncio.CancelledError  # the call failed: this chunk's answer is moot
            outcome = await self._attempt(payload, count)
            if not isinstance(outcome, FailedAttempt):
                return outcome
            await asyncio.sleep(self._wait_or_give_up(outcome, retries))
            self._check_open()
            retries += 1

    async def _attempt(self, payload: dict[str, Any], count: int) -> Answer | FailedAttempt:
        """One attempt: its answer, or what went wrong (raising only what is final)."""
        caught: Exception | None = None
        try:
            return await wait_within(self._exchange(payload, count), self._remaining())
        except Failed as failed:
            return failed.failure
        except asyncio.TimeoutError:
            return self._deadline_failure("answering")
        except (httpx.HTTPError, RuntimeError) as exc:
            caught = exc
        outcome = self._transport_failure(caught)
        del caught
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _exchange(self, payload: dict[str, Any], count: int) -> Answer:
        plan = self.plan

        def reader_for(response: httpx.Response, request: httpx.Request) -> BodyReader:
            return BodyReader(response, request, count, plan.max_response_bytes, plan.reader.text)

        timeout = min(plan.timeout, max(self._remaining(), 0.001))
        outgoing = Outgoing(plan.url, payload, plan.headers, timeout, reader_for)
        response, content = await self.exchange.send(outgoing)
        if len(content) > _OFF_LOOP_BYTES:
            # Parsed in a worker: the loop (shared by every sync call) keeps its timers going.
            return await asyncio.to_thread(plan.reader.parse, response, content, count)
        return plan.reader.parse(response, content, count)

    def _remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def _deadline_failure(self, doing: str) -> FailedAttempt:
        plan = self.plan
        return FailedAttempt(
            ProviderUnavailableError,
            f"{plan.provider} at {plan.url} ran out of the {plan.retry.deadline:g}s deadline "
            f"{doing}",
            plan.provider,
            transport="timeout",
        )

    def _wait_or_give_up(self, failure: FailedAttempt, retries: int) -> float:
        """Seconds to sleep before the next attempt, as the policy decides; else raise."""
        retry = self.plan.retry
        step = retry.decide(failure, retries, time.monotonic() - self.started)
        if isinstance(step, ProviderError):
            raise step
        logger.info(
            "%s: %s; retry %d of %d in %.2fs",
            self.plan.provider,
            failure.error.__name__,
            retries + 1,
            retry.max_retries,
            step,
        )
        return step

    def _check_open(self) -> None:
        """Raise a typed error when the reranker (or its client) was closed during the call."""
        error = self._closed_error()
        if error is not None:
            raise error

    def _closed_error(self) -> ProviderUnavailableError | None:
        provider = self.plan.provider
        if self.plan.closed():
            return ProviderUnavailableError(
                f"{provider}: the reranker was closed during the call", provider=provider
            )
        if self.exchange.is_closed:
            return ProviderUnavailableError(
                f"{provider}: the HTTP client was closed during the call", provider=provider
            )
        return None

    def _transport_failure(self, exc: Exception) -> FailedAttempt | Exception:
        """What a transport exception means: a failure to judge, or an error to raise as is.

        Returned, not raised, so the caller raises it outside its ``except`` block.
        """
        closed = self._closed_error()
        if closed is not None:
            return closed
        if isinstance(exc, RuntimeError):
            return exc  # not a transport error, nor a closed client: a bug, shown as it is
        plan, safe = self.plan, self.plan.reader.text.safe
        if isinstance(exc, httpx.DecodingError):
            return plan.reader.text.invalid(f"the answer could not be decoded: {safe(str(exc))}")
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return ConfigurationError(
                f"{plan.provider}: cannot post to {plan.url}: {safe(str(exc))}"
            )
        message = (
            f"{plan.provider} could not be reached at {plan.url}: "
            f"{type(exc).__name__}: {safe(str(exc))}"
        )
        transport: Literal["connect", "timeout"] = (
            "timeout" if isinstance(exc, httpx.TimeoutException) else "connect"
        )
        return FailedAttempt(ProviderUnavailableError, message, plan.provider, transport=transport)


async def gather_or_cancel(coros: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run awaitables concurrently; on the first failure cancel the others and raise it.

    Every failure is retrieved, not only the one raised: chunks failing together (the upstream
    down) would each log "Task exception was never retrieved" when collected.
    """
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    if pending:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    errors = [task.exception() for task in tasks if task.done() and not task.cancelled()]
    for error in errors:
        if error is not None:
            raise error
    return [task.result() for task in tasks]


async def wait_within(coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
    """``coro``'s result, run as a task, or ``asyncio.TimeoutError`` after ``timeout`` seconds.

    Unlike ``asyncio.wait_for`` before Python 3.12 (CPython gh-86296), it never returns the
    result of a task that finished in the loop turn the caller was cancelled: the caller's
    cancellation always goes on (a chunk of a call that failed must not go on sending).
    """
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except BaseException:
        await _stop(task)
        raise
    if not done:
        await _stop(task)
        if task.cancelled():
            raise asyncio.TimeoutError
    return task.result()  # it may have finished as it was being stopped


async def _stop(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it ends; what it raised is retrieved, never logged."""
    task.add_done_callback(_retrieve)
    task.cancel()
    await asyncio.wait((task,))


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
