"""FallbackReranker over in-process rerankers: what falls through, who answered, fail-open."""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import sys
import threading
from collections.abc import Sequence

import pytest

from milvus_rerank import (
    AllRerankersFailedError,
    AuthenticationError,
    ConfigurationError,
    FallbackReranker,
    InvalidInputError,
    InvalidResponseError,
    MissingDependencyError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    Reranker,
    Usage,
)
from milvus_rerank.wrappers.fallback import FALLS_THROUGH
from tests.conftest import ScoreTableReranker

TABLE = {"alpha": 0.2, "beta": 0.9, "gamma": 0.5, "delta": 0.1}
DOCS = list(TABLE)
BEST_FIRST = [1, 2, 0, 3]
SECRET = "sk-live-do-not-print-" + "x" * 24


class Table(ScoreTableReranker):
    """A table reranker with a label of its own and a close/load/window record."""

    def __init__(self, name: str, window: int | None = None) -> None:
        super().__init__(TABLE)
        self.model_name = name
        self.window = window
        self.passages = 1
        self.closed = 0
        self.loaded = 0

    def close(self) -> None:
        self.closed += 1

    def load(self) -> Table:
        self.loaded += 1
        return self

    def input_window(self) -> int | None:
        return self.window

    def passages_per_document(self) -> int:
        return self.passages


class Failing(Reranker):
    """Raises ``error`` on every call (its text holds a secret no log or message may show)."""

    provider = "failing"

    def __init__(self, name: str, error: Exception) -> None:
        self.model_name = name
        self.error = error
        self.calls = 0
        self.closed = 0

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        self.calls += 1
        raise self.error

    def close(self) -> None:
        self.closed += 1


def down(status: int = 503) -> ProviderUnavailableError:
    return ProviderUnavailableError(f"down ({SECRET})", provider="x", status_code=status)


FALLING = [
    down(),
    RateLimitError(f"slow down {SECRET}", provider="x", retry_after=3.0),
    InvalidResponseError(f"garbage {SECRET}", provider="x"),
    TimeoutError(f"took too long {SECRET}"),
]
STOPPING = [
    AuthenticationError(f"bad key {SECRET}", provider="x", status_code=401),
    ConfigurationError(f"no such model {SECRET}"),
    MissingDependencyError("x", "local", "torch"),
    ProviderError(f"unknown model {SECRET}", provider="x", status_code=404),
    RuntimeError(f"a bug {SECRET}"),
]


def test_the_first_answer_is_returned_as_is(caplog: pytest.LogCaptureFixture) -> None:
    primary, secondary = Table("one"), Table("two")
    chain = FallbackReranker([primary, secondary])
    with caplog.at_level(logging.DEBUG, logger="milvus_rerank.fallback"):
        response = chain.rerank_response("q", DOCS, top_n=3)
    assert [r.index for r in response.results] == BEST_FIRST[:3]
    assert response.reranker is primary and response.answered_by == "table:one"
    assert response.failures == () and response.reranked
    assert secondary.calls == 0 and caplog.records == []


@pytest.mark.parametrize("error", FALLING, ids=lambda e: type(e).__name__)
def test_provider_side_failures_fall_through(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    primary, secondary = Failing("one", error), Table("two")
    chain = FallbackReranker([primary, secondary])
    with caplog.at_level(logging.WARNING, logger="milvus_rerank.fallback"):
        response = chain.rerank_response("q", DOCS)
    assert [r.index for r in response.results] == BEST_FIRST
    assert response.reranker is secondary and response.answered_by == "table:two"
    assert response.failures == (error,) and response.reranked
    assert chain.rerank("q", DOCS) == secondary.rerank("q", DOCS)
    (record, *_) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("rerankers[1] table:two answered after rerankers[0]")
    assert f"failing:one: {type(error).__name__}" in record.getMessage()
    assert SECRET not in caplog.text


@pytest.mark.parametrize("error", STOPPING, ids=lambda e: type(e).__name__)
def test_failures_that_need_fixing_do_not_fall_through(error: Exception) -> None:
    primary, secondary = Failing("one", error), Table("two")
    with pytest.raises(type(error)) as info:
        FallbackReranker([primary, secondary]).rerank("q", DOCS)
    assert info.value is error and secondary.calls == 0


def test_a_stop_after_earlier_failures_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    auth = AuthenticationError(f"bad key {SECRET}", provider="x", status_code=403)
    chain = FallbackReranker([Failing("one", down(502)), Failing("two", auth), Table("three")])
    with caplog.at_level(logging.WARNING, logger="milvus_rerank.fallback"):
        with pytest.raises(AuthenticationError):
            chain.rerank("q", DOCS)
    assert caplog.records[0].getMessage() == (
        "rerankers[1] failing:two raised AuthenticationError, which does not fall through, "
        "after rerankers[0] failing:one: ProviderUnavailableError (HTTP 502)"
    )
    assert SECRET not in caplog.text


@pytest.mark.parametrize("error", STOPPING[:4], ids=lambda e: type(e).__name__)
def test_fall_through_on_names_more_errors(error: Exception) -> None:
    chain = FallbackReranker(
        [Failing("one", error), Table("two")],
        fall_through_on=(AuthenticationError, ConfigurationError, ProviderError),
    )
    response = chain.rerank_response("q", DOCS)
    assert response.answered_by == "table:two" and response.failures == (error,)


def test_fall_through_on_takes_one_class() -> None:
    chain = FallbackReranker(
        [Failing("one", RuntimeError("oom")), Table("two")], fall_through_on=RuntimeError
    )
    assert chain.rerank_response("q", DOCS).answered_by == "table:two"
    assert chain.fall_through_on == (RuntimeError,)


@pytest.mark.parametrize(
    ("query", "documents", "top_n"),
    [("", DOCS, None), ("q", "not a list", None), ("q", [1, 2], None), ("q", DOCS, 0)],
)
def test_bad_input_reaches_no_reranker(query: object, documents: object, top_n: object) -> None:
    primary, secondary = Table("one"), Table("two")
    chain = FallbackReranker([primary, secondary], fall_through_on=InvalidInputError)
    with pytest.raises(InvalidInputError):
        chain.rerank(query, documents, top_n)  # type: ignore[arg-type]
    assert primary.calls == secondary.calls == 0


def test_no_documents_call_no_one() -> None:
    primary = Table("one")
    chain = FallbackReranker([primary])
    response = chain.rerank_response("q", [])
    assert response.results == [] and response.reranker is chain and primary.calls == 0


def test_all_failing_raises_one_typed_error_with_every_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = (down(503), RateLimitError(f"x {SECRET}", provider="x"), TimeoutError(SECRET))
    members = [Failing(f"m{i}", e) for i, e in enumerate(errors)]
    with caplog.at_level(logging.DEBUG, logger="milvus_rerank.fallback"):
        with pytest.raises(AllRerankersFailedError) as info:
            FallbackReranker(members).rerank("q", DOCS)
    error = info.value
    assert isinstance(error, ProviderError) and error.provider == "fallback"
    assert error.failures == errors
    assert error.labels == ("failing:m0", "failing:m1", "failing:m2")
    assert str(error) == (
        "every reranker failed: rerankers[0] failing:m0: ProviderUnavailableError (HTTP 503); "
        "rerankers[1] failing:m1: RateLimitError (HTTP 429); rerankers[2] failing:m2: TimeoutError"
    )
    assert error.__cause__ is None and SECRET not in repr(error)
    assert caplog.records == []  # raising says it all


def test_fail_open_returns_the_first_stage_order_unscored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chain = FallbackReranker([Failing("one", down()), Failing("two", down(500))], fail_open=True)
    with caplog.at_level(logging.WARNING, logger="milvus_rerank.fallback"):
        response = chain.rerank_response("q", DOCS, top_n=3)
    assert not response.reranked and response.reranker is chain
    assert response.answered_by == "fallback(failing:one, failing:two)"
    assert [(r.index, r.text) for r in response.results] == [(i, DOCS[i]) for i in range(3)]
    assert all(math.isnan(r.score) for r in response.results)
    assert [type(e) for e in response.failures] == [ProviderUnavailableError] * 2
    assert response.usage == Usage()
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "every reranker failed: rerankers[0] failing:one: ProviderUnavailableError" in (
        record.getMessage()
    )
    assert "fail_open" in record.getMessage() and SECRET not in caplog.text
    assert [r.index for r in chain.rerank("q", DOCS)] == [0, 1, 2, 3]  # the results only


def test_fail_open_still_raises_what_does_not_fall_through() -> None:
    auth = AuthenticationError("bad key", provider="x", status_code=401)
    chain = FallbackReranker([Failing("one", auth), Table("two")], fail_open=True)
    with pytest.raises(AuthenticationError):
        chain.rerank("q", DOCS)


def test_score_pairs_fall_through_but_never_fail_open() -> None:
    secondary = Table("two")
    chain = FallbackReranker([Failing("one", down()), secondary], fail_open=True)
    queries = ["q"] * len(DOCS)
    assert chain.score_pairs(queries, DOCS) == secondary.score_pairs(queries, DOCS)
    assert chain.score_pairs([], []) == []
    with pytest.raises(AllRerankersFailedError):
        FallbackReranker([Failing("one", down())], fail_open=True).score_pairs(queries, DOCS)
    with pytest.raises(InvalidInputError):
        chain.score_pairs(["q"], DOCS)


def test_nested_chains_fall_through_as_a_whole() -> None:
    inner = FallbackReranker([Failing("a", down()), Failing("b", down(504))])
    last = Table("c")
    response = FallbackReranker([inner, last]).rerank_response("q", DOCS)
    assert response.reranker is last
    (nested,) = response.failures
    assert isinstance(nested, AllRerankersFailedError) and len(nested.failures) == 2


def test_a_nested_chain_that_failed_open_falls_through_to_the_next_member(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = FallbackReranker([Failing("a", down())], fail_open=True)
    last = Table("c")
    with caplog.at_level(logging.WARNING, logger="milvus_rerank"):
        response = FallbackReranker([inner, last]).rerank_response("q", DOCS)
    # The inner chain never returned the first-stage order, so it does not say it did.
    assert "first-stage order" not in caplog.text and "answered after" in caplog.text
    assert response.reranker is last and response.reranked
    assert [r.index for r in response.results] == BEST_FIRST
    (nested,) = response.failures
    assert isinstance(nested, AllRerankersFailedError)
    assert nested.labels == ("failing:a",) and nested.failures == (inner.rerankers[0].error,)  # type: ignore[attr-defined]


async def test_a_nested_chain_that_failed_open_falls_through_async(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = FallbackReranker([Failing("a", down())], fail_open=True)
    last = Table("c")
    with caplog.at_level(logging.WARNING, logger="milvus_rerank"):
        response = await FallbackReranker([inner, last]).arerank_response("q", DOCS, top_n=1)
    assert "first-stage order" not in caplog.text
    assert response.reranker is last and [r.index for r in response.results] == [1]
    assert [type(e) for e in response.failures] == [AllRerankersFailedError]


def test_a_fail_open_chain_last_keeps_its_unreranked_answer() -> None:
    first = Failing("a", down())
    inner = FallbackReranker([Failing("b", down(502))], fail_open=True)
    response = FallbackReranker([first, inner]).rerank_response("q", DOCS)
    assert response.reranker is inner and not response.reranked
    assert all(math.isnan(r.score) for r in response.results)
    assert [e.status_code for e in response.failures] == [503, 502]  # type: ignore[attr-defined]


async def test_async_falls_through_and_fails_open() -> None:
    secondary = Table("two")
    chain = FallbackReranker([Failing("one", down()), secondary])
    response = await chain.arerank_response("q", DOCS, top_n=2)
    assert response.reranker is secondary and [r.index for r in response.results] == [1, 2]
    assert [r.index for r in await chain.arerank("q", DOCS)] == BEST_FIRST
    with pytest.raises(AllRerankersFailedError):
        await FallbackReranker([Failing("one", down())]).arerank("q", DOCS)
    opened = await FallbackReranker([Failing("one", down())], fail_open=True).arerank_response(
        "q", DOCS
    )
    assert not opened.reranked and [r.index for r in opened.results] == [0, 1, 2, 3]
    with pytest.raises(InvalidInputError):
        await chain.arerank("", DOCS)


class Slow(Reranker):
    """Sleeps in its async hook until cancelled; records how the cancellation ended."""

    provider = "slow"

    def __init__(self, swallow: bool = False) -> None:
        self.started = asyncio.Event()
        self.swallow = swallow
        self.cancelled = False

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        raise AssertionError("sync path not used here")

    async def _ascore(self, query: str, documents: list[str]) -> Sequence[float]:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            if self.swallow:  # a badly behaved reranker turns cancellation into an error
                raise down() from None
            raise
        return [0.0] * len(documents)


async def test_cancellation_propagates_and_never_tries_the_next() -> None:
    slow, secondary = Slow(), Table("two")
    task = asyncio.create_task(FallbackReranker([slow, secondary]).arerank("q", DOCS))
    await slow.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.cancelled and secondary.calls == 0


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is Python 3.11+")
async def test_a_swallowed_cancellation_still_stops_the_chain() -> None:
    slow, secondary = Slow(swallow=True), Table("two")
    task = asyncio.create_task(FallbackReranker([slow, secondary]).arerank("q", DOCS))
    await slow.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.cancelled and secondary.calls == 0


class Picky(Reranker):
    """Fails for queries that start with "fail"; thread-safe (no state)."""

    provider = "picky"

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        if query.startswith("fail"):
            raise down()
        return [TABLE.get(d, 0.0) for d in documents]


def test_who_answered_is_per_call_across_threads() -> None:
    primary, secondary = Picky(), Table("two")
    chain = FallbackReranker([primary, secondary])
    wrong: list[str] = []
    barrier = threading.Barrier(8)

    def work(worker: int) -> None:
        barrier.wait()
        for i in range(200):
            fail = (i + worker) % 3 == 0
            response = chain.rerank_response(("fail " if fail else "ok ") + str(i), DOCS)
            expected = "table:two" if fail else "picky"
            if response.answered_by != expected or len(response.failures) != int(fail):
                wrong.append(f"{worker}/{i}: {response.answered_by}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


@pytest.mark.parametrize(
    ("rerankers", "match"),
    [
        ([], "at least one"),
        ("abc", "list or tuple"),
        ({"a": 1}, "list or tuple"),
        ([ScoreTableReranker(), "cohere"], r"rerankers\[1\] must be a Reranker"),
    ],
)
def test_bad_members_are_configuration_errors(rerankers: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        FallbackReranker(rerankers)  # type: ignore[arg-type]


def test_a_member_twice_is_refused() -> None:
    one = Table("one")
    with pytest.raises(ConfigurationError, match=r"rerankers\[2\] is rerankers\[0\]"):
        FallbackReranker([one, Table("two"), one])


def test_a_member_repeated_inside_a_nested_chain_is_refused() -> None:
    one, two = Table("one"), Table("two")
    with pytest.raises(
        ConfigurationError, match=r"rerankers\[1\] repeats a reranker of rerankers\[0\]"
    ):
        FallbackReranker([FallbackReranker([one]), one])
    with pytest.raises(ConfigurationError, match=r"rerankers\[1\] repeats .*\(table:one\)"):
        FallbackReranker([one, FallbackReranker([two, FallbackReranker([one])])])
    inner = FallbackReranker([two])
    with pytest.raises(ConfigurationError, match=r"rerankers\[1\] is rerankers\[0\]"):
        FallbackReranker([inner, inner])
    assert (
        FallbackReranker([FallbackReranker([one]), two]).label
        == "fallback(fallback(table:one), table:two)"
    )


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (asyncio.CancelledError, "always propagate"),
        ((KeyboardInterrupt,), "always propagate"),
        (("ProviderError",), "not an exception class"),
        ("ProviderError", "exception class or a tuple"),
        ((ValueError, 3), "not an exception class"),
    ],
)
def test_bad_fall_through_on_is_refused(value: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        FallbackReranker([Table("one")], fall_through_on=value)  # type: ignore[arg-type]


def test_bad_fail_open_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="fail_open"):
        FallbackReranker([Table("one")], fail_open="yes")  # type: ignore[arg-type]


def test_repr_label_and_defaults() -> None:
    chain = FallbackReranker([Table("one"), Table("two")], fall_through_on=[AuthenticationError])
    assert chain.label == "fallback(table:one, table:two)"
    assert repr(chain) == (
        "FallbackReranker(rerankers=[Table(), Table()], "
        "fall_through_on=['AuthenticationError'], fail_open=False)"
    )
    assert FALLS_THROUGH[:3] == (ProviderUnavailableError, RateLimitError, InvalidResponseError)
    assert "fall_through_on" not in repr(FallbackReranker([Table("x")]))


def test_close_closes_every_member_even_when_one_fails() -> None:
    class BadClose(Table):
        def close(self) -> None:
            super().close()
            raise OSError("socket")

    first, bad, last = Table("one"), BadClose("two"), Table("three")
    with pytest.raises(OSError, match="socket"):
        FallbackReranker([first, bad, last]).close()
    assert first.closed == bad.closed == last.closed == 1
    with FallbackReranker([first, last]):
        pass
    assert first.closed == last.closed == 2


async def test_aclose_closes_every_member() -> None:
    first, last = Table("one"), Failing("two", down())
    async with FallbackReranker([first, last]):
        pass
    assert first.closed == last.closed == 1


def test_load_window_pickle_and_milvus() -> None:
    first, second, third = Table("one"), Table("two", window=512), Table("three", window=256)
    chain = FallbackReranker([first, second, third])
    assert chain.load() is chain and first.loaded == second.loaded == third.loaded == 1
    # The largest: serve lets every member read its all; unknown (None) if any cannot say.
    assert FallbackReranker([second, third]).input_window() == 512
    assert chain.input_window() is None
    assert FallbackReranker([first]).input_window() is None
    # Each member gets the same text: the chain reads as much as its longest-reading member.
    assert chain.passages_per_document() == 1
    second.passages = 7
    assert chain.passages_per_document() == 7
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(chain)
    with pytest.raises(ConfigurationError, match="cannot be a Milvus server-side Function"):
        chain.milvus_function_params("milvus")
