"""Local rerankers batch across concurrent callers: same scores and usage as alone, no leaks."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("torch")

from milvus_rerank import ConfigurationError, CrossEncoderReranker, Qwen3Reranker  # noqa: E402
from milvus_rerank.core.errors import RerankError  # noqa: E402
from milvus_rerank.providers.local import batching as _batching  # noqa: E402
from milvus_rerank.providers.local import runner_batching as _runner_batching  # noqa: E402
from milvus_rerank.providers.local.batching import spread, unique_pairs  # noqa: E402
from milvus_rerank.providers.local.options import LOCAL_DEFAULTS  # noqa: E402
from milvus_rerank.providers.local.reranker import LocalReranker  # noqa: E402
from tests.conftest import CORPUS  # noqa: E402

QUERIES = [
    "what is milvus",
    "capital of france",
    "who proposed a test of machine intelligence",
    "birth of artificial intelligence",
]
DOCS = [*CORPUS, "milvus", "a much longer document about vector databases " * 6, "x"]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from milvus_rerank.providers.local.tiny import (
        QWEN3_RERANKER_CHAT_TEMPLATE,
        build_tiny_qwen3_reranker,
    )

    root = tmp_path_factory.mktemp("tiny-qwen3-batching")
    return build_tiny_qwen3_reranker(
        root / "qwen3",
        texts=[*QUERIES, *DOCS],
        chat_template=QWEN3_RERANKER_CHAT_TEMPLATE,
        initializer_range=0.2,
    )


def alone(reranker: LocalReranker, query: str, docs: Sequence[str]) -> tuple[list[float], int]:
    """The unbatched scores and tokens: one prepare, forward and finish of this call only.

    Of its distinct documents: a repeated pair is scored, and its tokens counted, once.
    """
    queries, distinct, where = unique_pairs([query] * len(docs), docs)
    scored = reranker.runner.scores_and_tokens(queries, distinct, reranker.family)
    scores, tokens = spread(scored, where)
    return scores, sum(tokens)


def workload(
    rerankers: list[LocalReranker], calls: int
) -> list[tuple[LocalReranker, str, list[str]]]:
    """Calls over the rerankers in turn, with varied queries and document subsets."""
    return [
        (
            rerankers[i % len(rerankers)],
            QUERIES[i % len(QUERIES)],
            DOCS[i % 5 : i % 5 + 2 + i % 7],
        )
        for i in range(calls)
    ]


def check(reranker: LocalReranker, query: str, docs: list[str], response: Any) -> None:
    want_scores, want_tokens = alone(reranker, query, docs)
    got = {r.index: r.score for r in response.results}
    assert [got[i] for i in range(len(docs))] == pytest.approx(want_scores, abs=1e-5)
    assert response.usage.tokens == want_tokens  # exact: only this call's rows count


def test_concurrent_callers_threads_and_tasks_score_as_alone(
    tiny_models: dict[str, Path], qwen3_dir: Path
) -> None:
    ce = CrossEncoderReranker(str(tiny_models["ce"]), device="cpu")
    base = Qwen3Reranker(str(qwen3_dir), device="cpu")
    strict = base.with_instruction("Judge strictly: only exact answers are relevant")
    loose = base.with_instruction("Anything on the topic is relevant")
    rerankers: list[LocalReranker] = [ce, base, strict, loose]
    for reranker in rerankers:
        reranker.load()
    shared = _runner_batching.runner_batcher(base.runner)
    assert _runner_batching.runner_batcher(strict.runner) is shared  # views batch with their base
    ce_batches, qwen_batches = _runner_batching.runner_batcher(ce.runner).batches, shared.batches

    tasks = workload(rerankers, 48)
    threaded = workload(rerankers[::-1], 16)
    answers: dict[int, Any] = {}
    start = threading.Barrier(len(threaded) + 1)

    def in_thread(i: int) -> None:
        reranker, query, docs = threaded[i]
        start.wait()
        answers[i] = reranker.rerank_response(query, docs)

    async def many() -> list[Any]:
        start.wait()
        return list(await asyncio.gather(*(r.arerank_response(q, d) for r, q, d in tasks)))

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(len(threaded))]
    for thread in threads:
        thread.start()
    responses = asyncio.run(many())
    for thread in threads:
        thread.join(60)
    for (reranker, query, docs), response in zip(tasks, responses, strict=True):
        check(reranker, query, docs, response)
    for i, (reranker, query, docs) in enumerate(threaded):
        check(reranker, query, docs, answers[i])
    # They did share forward passes: far fewer than one per call.
    calls = len(tasks) + len(threaded)
    done = (_runner_batching.runner_batcher(ce.runner).batches - ce_batches) + (
        shared.batches - qwen_batches
    )
    assert done < calls * 3 // 4
    assert strict.score_pairs(QUERIES[:2], DOCS[:2]) == pytest.approx(
        [alone(strict, q, [d])[0][0] for q, d in zip(QUERIES[:2], DOCS[:2], strict=True)],
        abs=1e-5,
    )


def _fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def _settle_workers() -> None:
    deadline = time.monotonic() + _batching.IDLE_EXIT + 10
    while workers := [
        t for t in threading.enumerate() if t.name.startswith("milvus-rerank-batcher")
    ]:
        if time.monotonic() > deadline:
            frames = sys._current_frames()
            where = ["".join(traceback.format_stack(frames[t.ident])) for t in workers if t.ident]
            raise AssertionError(f"a batcher worker did not end when idle: {where}")
        time.sleep(0.01)


def test_a_thousand_asyncio_runs_leak_no_threads_or_fds(tiny_models: dict[str, Path]) -> None:
    reranker = CrossEncoderReranker(str(tiny_models["ce"]), device="cpu").load()
    want = [r.index for r in reranker.rerank(QUERIES[0], DOCS[:3])]
    asyncio.run(reranker.arerank(QUERIES[0], DOCS[:3]))
    _settle_workers()
    threads, fds = threading.active_count(), _fds()
    for _ in range(1000):
        ranked = asyncio.run(reranker.arerank(QUERIES[0], DOCS[:3]))
        assert [r.index for r in ranked] == want
    assert threading.active_count() <= threads + 1, [
        t.name for t in threading.enumerate()
    ]  # at most the batcher's worker, idling
    _settle_workers()
    assert threading.active_count() == threads and _fds() == fds


class Gate:
    """Wraps a runner's forward: records each call's rows and can hold it until opened."""

    def __init__(self, forward: Callable[[Any], list[float]], fail_first: bool = False) -> None:
        self.forward = forward
        self.open = threading.Event()
        self.entered = threading.Event()
        self.fail_first = fail_first
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, rows: Any) -> list[float]:
        with self._lock:  # two workers may enter at once
            self.calls.append(len(rows))
            number = len(self.calls)
        self.entered.set()
        assert self.open.wait(30)
        if self.fail_first and number == 1:
            raise RuntimeError("the model crashed")
        return self.forward(rows)


async def test_a_cancelled_arerank_drops_its_queued_rows(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One worker: the second call's rows wait, queued, behind the held batch.
    path = str(tiny_models["ce"])
    reranker = CrossEncoderReranker(path, device="cpu", batch_workers=1).load()
    gate = Gate(reranker.runner.forward)
    monkeypatch.setattr(reranker.runner, "forward", gate)
    batcher = _runner_batching.runner_batcher(reranker.runner)
    first = asyncio.ensure_future(reranker.arerank(QUERIES[0], DOCS[:2]))
    await asyncio.to_thread(gate.entered.wait, 30)
    left = asyncio.ensure_future(reranker.arerank(QUERIES[1], DOCS))
    while batcher.pending < len(DOCS):  # encoded and queued behind the held batch
        await asyncio.sleep(0.01)
    left.cancel()
    with pytest.raises(asyncio.CancelledError):
        await left
    assert batcher.pending == 0  # dropped before the model is free again
    gate.open.set()
    assert len(await first) == 2
    assert gate.calls == [2]  # the cancelled call's rows never reached the model


async def test_a_failing_forward_fails_exactly_the_calls_in_that_batch(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reranker = CrossEncoderReranker(str(tiny_models["ce"]), device="cpu").load()
    gate = Gate(reranker.runner.forward, fail_first=True)
    monkeypatch.setattr(reranker.runner, "forward", gate)
    first = asyncio.ensure_future(reranker.arerank(QUERIES[0], DOCS[:2]))
    await asyncio.to_thread(gate.entered.wait, 30)
    later = [asyncio.ensure_future(reranker.arerank(q, DOCS[:3])) for q in QUERIES]
    await asyncio.sleep(0.2)  # queued behind the failing batch
    gate.open.set()
    with pytest.raises(RuntimeError, match="the model crashed"):
        await first
    for query, task in zip(QUERIES, later, strict=True):
        got = [r.index for r in await task]
        assert got == [r.index for r in reranker.rerank(query, DOCS[:3])]


def test_batching_off_scores_each_call_on_its_own(tiny_models: dict[str, Path]) -> None:
    path = str(tiny_models["ce"])
    off = CrossEncoderReranker(path, device="cpu", batch_across_calls=False)
    on = CrossEncoderReranker(path, device="cpu")
    got = off.rerank_response(QUERIES[0], DOCS)
    assert asyncio.run(off.arerank_response(QUERIES[0], DOCS)).results == got.results
    assert off.score_pairs(QUERIES[:1], DOCS[:1]) == alone(off, QUERIES[0], DOCS[:1])[0]
    assert off.runner not in _runner_batching._RUNNERS  # never went through a batcher
    check(off, QUERIES[0], DOCS, got)
    check(on, QUERIES[0], DOCS, on.rerank_response(QUERIES[0], DOCS))
    assert on.runner in _runner_batching._RUNNERS
    assert "batch_across_calls=False" in repr(off) and "batch_across" not in repr(on)
    assert "batch_wait_ms" not in repr(on)


def test_a_lone_caller_does_not_wait_for_company(tiny_models: dict[str, Path]) -> None:
    reranker = CrossEncoderReranker(str(tiny_models["ce"]), device="cpu", batch_wait_ms=1000)
    assert "batch_wait_ms=1000" in repr(reranker)
    started = time.monotonic()
    for query in QUERIES:
        reranker.rerank(query, DOCS)
        asyncio.run(reranker.arerank(query, DOCS))
    assert time.monotonic() - started < 6  # waits would take 8 s
    batcher = _runner_batching.runner_batcher(reranker.runner)
    assert batcher.max_wait == 1.0
    # After callers did come together, and then nothing came for a while, a lone caller
    # is served at once again (the workers went idle: callers no longer come together).

    async def together() -> None:
        await asyncio.gather(*(reranker.arerank(q, DOCS) for q in QUERIES * 4))

    asyncio.run(together())
    assert batcher._last_jobs >= 1  # the last batch's callers (more than one: a wait)
    _settle_workers()
    assert batcher._last_jobs == 0
    started = time.monotonic()
    reranker.rerank(QUERIES[0], DOCS)
    assert time.monotonic() - started < 0.9  # a wait for company would take 1 s


@pytest.mark.parametrize(
    ("options", "shown"),
    [
        ({"batch_wait_ms": -1}, "-1"),
        ({"batch_wait_ms": float("nan")}, "nan"),
        ({"batch_wait_ms": float("inf")}, "inf"),
        ({"batch_wait_ms": 1000.5}, "1000.5"),
        ({"batch_wait_ms": 1e13}, "10000000000000"),
        ({"batch_wait_ms": "2"}, "'2'"),
        ({"batch_wait_ms": True}, "True"),
        ({"batch_across_calls": "yes"}, "'yes'"),
    ],
)
def test_bad_batching_options_are_configuration_errors(
    options: dict[str, object], shown: str
) -> None:
    name = next(iter(options))
    with pytest.raises(ConfigurationError, match=f"{name}.*{shown}"):
        CrossEncoderReranker("unused", **options)  # type: ignore[arg-type]


def test_batching_defaults_are_documented() -> None:
    assert LOCAL_DEFAULTS["batch_across_calls"] is True
    assert LOCAL_DEFAULTS["batch_wait_ms"] == 2.0
    assert LOCAL_DEFAULTS["batch_workers"] is None  # the device's: 2 on CPUs, 1 on GPUs


def test_batch_workers_is_the_batchers_worker_count(tiny_models: dict[str, Path]) -> None:
    path = str(tiny_models["ce"])
    default = CrossEncoderReranker(path, device="cpu").load()
    assert (
        _runner_batching.runner_batcher(default.runner).workers == _runner_batching.CPU_WORKERS == 2
    )
    assert "batch_workers" not in repr(default)
    three = CrossEncoderReranker(path, device="cpu", batch_workers=3).load()
    assert _runner_batching.runner_batcher(three.runner).workers == 3
    assert "batch_workers=3" in repr(three)
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ConfigurationError, match=f"batch_workers.*{bad!r}"):
            CrossEncoderReranker(path, batch_workers=bad)  # type: ignore[arg-type]


def test_serve_scores_as_many_batches_at_once_as_the_reranker(
    tiny_models: dict[str, Path],
) -> None:
    pytest.importorskip("starlette")
    from milvus_rerank.app.serve import create_app

    path = str(tiny_models["ce"])
    local = CrossEncoderReranker(path, device="cpu").load()
    assert create_app(local).state.batcher.workers == 2  # the reranker's CPU default
    three = CrossEncoderReranker(path, device="cpu", batch_workers=3).load()
    assert create_app(three).state.batcher.workers == 3
    assert create_app(three, batch_workers=1).state.batcher.workers == 1
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigurationError, match=f"batch_workers.*{bad!r}"):
            create_app(local, batch_workers=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_worker_scores_the_next_batch_beside_a_held_one(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    reranker = CrossEncoderReranker(
        str(tiny_models["ce"]), device="cpu", batch_workers=workers
    ).load()
    gate = Gate(reranker.runner.forward)
    monkeypatch.setattr(reranker.runner, "forward", gate)
    batcher = _runner_batching.runner_batcher(reranker.runner)
    answers: dict[int, Any] = {}

    def call(i: int) -> None:
        answers[i] = reranker.rerank_response(QUERIES[i], DOCS[: 2 + i])

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert gate.entered.wait(30)
    second = threading.Thread(target=call, args=(1,))
    second.start()
    deadline = time.monotonic() + 30
    if workers == 2:  # the second call's batch starts while the first is still held
        while len(gate.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.calls == [2, 3] and batcher.pending == 0
    else:  # one worker: it waits, queued
        while batcher.pending < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.calls == [2] and batcher.pending == 3
    gate.open.set()
    first.join(30)
    second.join(30)
    for i in (0, 1):
        check(reranker, QUERIES[i], DOCS[: 2 + i], answers[i])


def test_serve_batches_local_rows_by_their_real_tokens(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("starlette")
    from milvus_rerank.app.serve import create_app

    reranker = CrossEncoderReranker(str(tiny_models["ce"]), device="cpu").load()
    docs = [f"{DOCS[i % len(DOCS)]} {i}" for i in range(30)]
    want = reranker.rerank("q", docs)
    calls: list[tuple[int, int]] = []  # (rows, tokens) of each model call
    forward = reranker.runner.forward

    def recording(rows: Any) -> list[float]:
        calls.append((len(rows), sum(len(row["input_ids"]) for row in rows)))
        return forward(rows)

    monkeypatch.setattr(reranker.runner, "forward", recording)
    app = create_app(reranker, max_batch_tokens=40)

    async def post() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return (await client.post("/v1/rerank", json={"query": "q", "documents": docs})).json()

    body = asyncio.run(post())
    assert [r["index"] for r in body["results"]] == [r.index for r in want]
    rows = reranker.runner.encode_many(["q"] * len(docs), docs)
    assert len(calls) > 1 and all(tokens <= 40 or count == 1 for count, tokens in calls)
    assert sum(tokens for _, tokens in calls) == sum(len(row["input_ids"]) for row in rows)


def test_a_lone_call_gets_its_own_passes(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reranker = CrossEncoderReranker(str(tiny_models["ce"]), device="cpu", max_length=64).load()
    # Within one micro-batch: exactly the passes (and so the very scores) it gets alone.
    got = {r.index: r.score for r in reranker.rerank(QUERIES[0], DOCS)}
    assert [got[i] for i in range(len(DOCS))] == alone(reranker, QUERIES[0], DOCS)[0]
    # Larger than a micro-batch: cut longest first into contiguous length ranges.
    lengths: list[list[int]] = []
    forward = reranker.runner.forward

    def recording(rows: Any) -> list[float]:
        lengths.append([len(row["input_ids"]) for row in rows])
        return forward(rows)

    monkeypatch.setattr(reranker.runner, "forward", recording)
    many = [f"{i} " + " ".join([DOCS[i % len(DOCS)]] * (1 + i % 9)) for i in range(400)]
    response = reranker.rerank_response(QUERIES[1], many)
    assert len(lengths) > 1
    lengths.sort(key=max, reverse=True)  # two workers may start their passes in either order
    assert all(min(a) >= max(b) for a, b in zip(lengths, lengths[1:], strict=False))
    monkeypatch.undo()
    check(reranker, QUERIES[1], many, response)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_the_tokenizer_is_in_use_can_rerank(
    tiny_models: dict[str, Path],
) -> None:
    import signal
    import warnings

    reranker = CrossEncoderReranker(str(tiny_models["ce"]), device="cpu").load()
    want = [r.index for r in reranker.rerank(QUERIES[0], DOCS)]
    runner = reranker.runner
    # A parent thread is tokenizing (holds the tokenizer's lock) at the moment of the fork;
    # no thread of the child will ever release it.
    with runner._tokenizer_lock, runner._load_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                signal.alarm(60)  # a deadlock ends the child, as a failure
                ok = [r.index for r in reranker.rerank(QUERIES[0], DOCS)] == want
            finally:
                os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


FORK_WITH_PARALLEL_TOKENIZERS = """
import os, signal, sys, warnings
os.environ["TOKENIZERS_PARALLELISM"] = "true"  # turns off the tokenizers library's fork guard
from milvus_rerank import CrossEncoderReranker
reranker = CrossEncoderReranker(sys.argv[1], device="cpu")
docs = [f"milvus vector database document number {i} " * 5 for i in range(64)]
want = [r.index for r in reranker.rerank("milvus", docs)]  # the parent's Rust pool is used
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    pid = os.fork()
if pid == 0:
    signal.alarm(30)  # a deadlock ends the child, as a failure
    ok = [r.index for r in reranker.rerank("milvus", docs)] == want
    os._exit(0 if ok and os.environ["TOKENIZERS_PARALLELISM"] == "false" else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_reranks_with_tokenizers_parallelism_on(
    tiny_models: dict[str, Path],
) -> None:
    """gunicorn --preload with TOKENIZERS_PARALLELISM=true: the child's first encode hung."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FORK_WITH_PARALLEL_TOKENIZERS, str(tiny_models["ce"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


EXIT_WHILE_SCORING = """
import os, signal, sys, threading, time
from milvus_rerank import CrossEncoderReranker
from milvus_rerank.providers.local import runner_batching
from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

path = build_tiny_cross_encoder(
    sys.argv[1], num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024
)
reranker = CrossEncoderReranker(str(path), device="cpu").load()
runner = reranker.runner
docs = [f"milvus vector database document number {i} " * 12 for i in range(400)]
encoded = []
original = runner.prepare


def prepare(*args, **kwargs):
    out = original(*args, **kwargs)
    encoded.append(len(out.rows))
    return out


runner.prepare = prepare  # counts the calls whose rows are about to be queued


def busy(calls):
    # Every call's rows are queued (or in a pass) and the workers run forward passes.
    deadline = time.monotonic() + 60
    while len(encoded) < calls or runner_batching.runner_batcher(runner).batches < 1:
        if time.monotonic() > deadline:
            os._exit(3)
        time.sleep(0.001)


if sys.argv[2] == "exit":  # many calls queued from daemon threads; the main thread exits
    for _ in range(6):
        threading.Thread(target=reranker.rerank, args=("milvus", docs), daemon=True).start()
    busy(6)
    sys.exit(0)
# Ctrl-C in the main thread during one large call, exiting 130 as the command line does
threading.Thread(target=lambda: (busy(1), os.kill(os.getpid(), signal.SIGINT)), daemon=True).start()
try:
    reranker.rerank("milvus", docs * 6)
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(4)  # the interrupt never came
"""


@pytest.mark.slow  # a subprocess that builds and runs a model
@pytest.mark.parametrize(("how", "code"), [("exit", 0), ("interrupt", 130)])
def test_exiting_while_forward_passes_run_exits_cleanly(
    tmp_path: Path, how: str, code: int
) -> None:
    """Daemon batcher workers torn down inside torch's forward aborted the process (134)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", EXIT_WHILE_SCORING, str(tmp_path / "model"), how],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert "terminate called" not in done.stderr
    assert done.returncode == code, done.stderr[-2000:]


def test_a_closed_batcher_fails_queued_callers_and_refuses_new_rows(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reranker = CrossEncoderReranker(str(tiny_models["ce"]), device="cpu", batch_workers=1).load()
    batcher = _runner_batching.runner_batcher(reranker.runner)
    entered, release = threading.Event(), threading.Event()
    original = reranker.runner.forward

    def gate(rows: Sequence[dict[str, list[int]]]) -> list[float]:
        entered.set()
        release.wait(30)
        return original(rows)

    monkeypatch.setattr(reranker.runner, "forward", gate)
    first = reranker.runner.prepare([QUERIES[0]] * 3, DOCS[:3], reranker.family)
    second = reranker.runner.prepare([QUERIES[1]] * 3, DOCS[:3], reranker.family)
    running = _batching.submit_prepared(batcher, reranker.runner, first)
    assert entered.wait(30)
    queued = _batching.submit_prepared(batcher, reranker.runner, second)
    closing = threading.Thread(target=batcher.close, kwargs={"timeout": 30})
    closing.start()
    with pytest.raises(RerankError, match="closed"):
        queued.result(timeout=30)  # failed at once, while the running pass goes on
    assert not running.done()
    release.set()
    closing.join(30)
    assert running.result(timeout=30)[0] == pytest.approx(alone(reranker, QUERIES[0], DOCS[:3])[0])
    assert not batcher.running
    with pytest.raises(RerankError, match="closed"):
        _batching.submit_prepared(batcher, reranker.runner, second)
