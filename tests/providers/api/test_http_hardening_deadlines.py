"""The HTTP layer against servers that stall: deadlines hold, nothing is left behind."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil
import pytest

from milvus_rerank import (
    ConfigurationError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    RetryPolicy,
    VLLMReranker,
)
from tests.fakes import FaultPlan, FaultServer
from tests.providers.api.hostile_servers import (  # noqa: E402
    DOCS,
    MODES,
    QUERY,
    TRICKLED_BODY,
    TRICKLED_HEADERS,
    RawServer,
    Reply,
    as_json,
    asgi,
    call,
    ok_handler,
    order,
    ranked,
    trickle,
)

#: Loopback servers that misbehave, and seconds of waiting: outside the unit tier.
pytestmark = pytest.mark.slow

# -- 6: the deadline holds whatever the server does -------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("opening", [TRICKLED_HEADERS, TRICKLED_BODY], ids=["headers", "body"])
async def test_deadline_holds_against_a_trickling_server(mode: str, opening: bytes) -> None:
    with RawServer(trickle(opening)) as server:
        reranker = VLLMReranker(base_url=server.url, retry=RetryPolicy(deadline=2.0))
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match="deadline"):
            await call(reranker, mode)
        took = time.monotonic() - started
        await reranker.aclose()
    print(f"\ntrickled {mode}: ended after {took:.2f}s with deadline=2")
    assert 1.9 <= took < 3.0


def test_deadline_holds_for_a_trickled_body_over_an_injected_client() -> None:
    with RawServer(trickle(TRICKLED_BODY)) as server, httpx.Client() as client:
        reranker = VLLMReranker(
            base_url=server.url, retry=RetryPolicy(deadline=2.0), http_client=client
        )
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match="deadline"):
            reranker.rerank(QUERY, DOCS)
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("mode", MODES)
async def test_the_deadline_covers_waiting_for_a_request_slot(mode: str) -> None:
    with asgi(ok_handler(delay=1.5)) as server:
        reranker = VLLMReranker(
            base_url=server.url, max_concurrency=1, retry=RetryPolicy(deadline=1.0)
        )
        first = asyncio.create_task(call(reranker, mode))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match="deadline"):
            await call(reranker, mode)  # it waits for the slot, then has 0.3 s left
        assert time.monotonic() - started < 1.2  # ends at its own deadline, not at 1 + 1 s
        with pytest.raises(ProviderUnavailableError):
            await first
        await reranker.aclose()


async def test_a_huge_retry_after_is_not_waited_past_the_deadline() -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return as_json({"message": "slow down"}, 429, retry_after="100000000")

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, retry=RetryPolicy(deadline=2.0))
        started = time.monotonic()
        with pytest.raises(RateLimitError) as info:
            await reranker.arerank(QUERY, DOCS)
        await reranker.aclose()
    assert time.monotonic() - started < 0.5
    assert info.value.retry_after == 100000000


# -- 7: no client, socket or memory left behind ------------------------------------------------


def test_1000_asyncio_run_calls_leave_fds_and_memory_flat() -> None:
    process = psutil.Process()
    with asgi(ok_handler()) as server:
        reranker = VLLMReranker(base_url=server.url)

        def one() -> None:
            results = asyncio.run(reranker.arerank(QUERY, DOCS))
            assert [r.index for r in results] == order(DOCS)

        for _ in range(50):
            one()
        gc.collect()
        fds, rss = process.num_fds(), process.memory_info().rss
        started = time.monotonic()
        for _ in range(1000):
            one()
        took = time.monotonic() - started
        gc.collect()
        grown_fds = process.num_fds() - fds
        grown_rss = (process.memory_info().rss - rss) / 2**20
        states = len(reranker._clients.loops)
    print(
        f"\n1,000 asyncio.run(arerank): {took:.1f}s, open fds {grown_fds:+d}, "
        f"RSS {grown_rss:+.1f} MiB, per-loop states left {states}"
    )
    assert grown_fds <= 10
    assert grown_rss < 50
    assert states <= 1


def test_rerankers_dropped_without_close_release_their_sockets() -> None:
    process = psutil.Process()
    with asgi(ok_handler()) as server:
        VLLMReranker(base_url=server.url).rerank(QUERY, DOCS)  # the private loop runs
        gc.collect()
        fds = process.num_fds()
        for _ in range(200):
            VLLMReranker(base_url=server.url).rerank(QUERY, DOCS)
        gc.collect()
        for _ in range(50):  # closing is scheduled on the clients' loop: let it run
            if process.num_fds() <= fds + 10:
                break
            time.sleep(0.05)
        grown = process.num_fds() - fds
    assert grown <= 10


# -- 8: one bound on requests in flight per reranker ---------------------------------------


def test_max_concurrency_is_one_bound_over_threads_and_event_loops(
    fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.latency = 0.1
    reranker = VLLMReranker(base_url=fault_server.url, max_concurrency=2, max_batch=1)
    outcomes: list[object] = []

    def sync_caller() -> None:
        outcomes.append(reranker.rerank(QUERY, DOCS))

    def loop_caller() -> None:
        async def many() -> list[object]:
            return list(await asyncio.gather(*(reranker.arerank(QUERY, DOCS) for _ in range(3))))

        outcomes.extend(asyncio.run(many()))

    threads = [threading.Thread(target=f) for f in (sync_caller, sync_caller, loop_caller) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    reranker.close()
    assert len(outcomes) == 10
    assert all([r.index for r in res] == order(DOCS) for res in outcomes)  # type: ignore[attr-defined]
    assert len(fault_plan.requests) == 30
    assert fault_plan.max_in_flight == 2


# -- 9: closing during a call ends it cleanly -------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_closing_during_a_call_ends_it_with_a_result_or_a_typed_error(
    mode: str, fault_plan: FaultPlan, fault_server: FaultServer
) -> None:
    fault_plan.script = ["503", "503"]
    fault_plan.latency = 0.3
    reranker = VLLMReranker(
        base_url=fault_server.url, retry=RetryPolicy(backoff_base=0.2, backoff_max=0.2)
    )
    task = asyncio.create_task(call(reranker, mode))
    await asyncio.sleep(0.1)
    if mode == "sync":
        reranker.close()
    else:
        await reranker.aclose()
    try:
        outcome: object = await asyncio.wait_for(task, 10)
    except ProviderError as exc:
        outcome = exc
        assert "closed during the call" in str(exc)
    assert isinstance(outcome, (list, ProviderError))
    reranker.close()


# -- 10: a failing chunk ends the call at once, sync and async --------------------------------


@pytest.mark.parametrize("client", ["own", "injected"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_failing_chunk_fails_the_call_at_once(mode: str, client: str) -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if any("fail" in d for d in body["documents"]):
            return as_json({"message": "bad chunk"}, 400)
        await asyncio.sleep(2)
        return as_json(ranked(body))

    docs = ["fail"] + [f"slow {i}" for i in range(5)]
    with asgi(handler) as server:
        injected: dict[str, Any] = {}
        if client == "injected":
            injected = {"http_client": httpx.Client(), "http_async_client": httpx.AsyncClient()}
        reranker = VLLMReranker(base_url=server.url, max_batch=1, **injected)
        started = time.monotonic()
        with pytest.raises(ProviderError, match="HTTP 400"):
            await call(reranker, mode, docs)
        took = time.monotonic() - started
        await reranker.aclose()
        for c in injected.values():
            await c.aclose() if isinstance(c, httpx.AsyncClient) else c.close()
    assert took < 1.0


@pytest.mark.parametrize("mode", MODES)
async def test_a_failed_call_sends_nothing_more(mode: str) -> None:
    # Attack F2 (Python 3.11): the chunk waiting for a slot got the failing chunk's slot in the
    # loop turn the call cancelled it, and asyncio.wait_for lost the cancellation: it went on
    # sending and retrying a 503 after the call had failed (before: 2.2 s, 5 requests).
    seen: list[str] = []

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        seen.append(body["documents"][0])
        if body["documents"] == ["fail"]:
            await asyncio.sleep(0.2)  # the other chunk is waiting out its Retry-After by then
            return as_json({"message": "bad chunk"}, 400)
        return as_json({"message": "busy"}, 503, retry_after="1")

    with asgi(handler) as server:
        reranker = VLLMReranker(
            base_url=server.url,
            max_batch=1,
            max_concurrency=2,
            retry=RetryPolicy(max_retries=2, deadline=10),
        )
        started = time.monotonic()
        with pytest.raises(ProviderError, match="HTTP 400"):
            await call(reranker, mode, ["fail", "busy 1", "busy 2"])
        took = time.monotonic() - started
        await asyncio.sleep(1.2)  # a retry still going would have been sent by now
        await reranker.aclose()
    assert took < 0.8
    assert sorted(seen) == ["busy 1", "fail"]


# -- F12: an injected client is bounded by the deadline, whatever the server sends ---------


def endless(opening: bytes, line: bytes) -> Callable[[socket.socket], None]:
    def serve(conn: socket.socket) -> None:
        conn.sendall(opening)
        for _ in range(600):  # 30 s at most
            time.sleep(0.05)
            conn.sendall(line)

    return serve


@pytest.mark.parametrize(
    ("opening", "line"),
    [(b"", b"HTTP/1.1 100 Continue\r\n\r\n"), (b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n")],
    ids=["endless 100 Continue", "endless header lines"],
)
def test_an_injected_client_is_bounded_by_the_deadline(opening: bytes, line: bytes) -> None:
    with RawServer(endless(opening, line)) as server, httpx.Client(timeout=1.0) as client:
        reranker = VLLMReranker(
            base_url=server.url, http_client=client, timeout=1.0, retry=RetryPolicy(deadline=2)
        )
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match="deadline"):
            reranker.rerank(QUERY, DOCS)
        took = time.monotonic() - started
        for _ in range(40):  # the abandoned request's socket was shut: its worker ends
            if not any(t.name.startswith("rerank") for t in threading.enumerate()):
                break
            time.sleep(0.05)
        workers = sum(t.name.startswith("rerank") for t in threading.enumerate())
    print(f"\ninjected client, {line!r} forever: ended after {took:.2f}s, workers left {workers}")
    assert 1.9 <= took < 3.0  # before: still running after 12 s
    assert workers == 0


# -- F13: a fork in the middle of a call leaves the child its slots ----------------------


def test_a_fork_during_a_call_leaves_the_child_every_request_slot() -> None:
    import os

    with asgi(ok_handler(delay=1.0)) as server:
        reranker = VLLMReranker(
            base_url=server.url, max_concurrency=1, retry=RetryPolicy(deadline=3)
        )
        reranker.rerank(QUERY, DOCS)
        busy = threading.Thread(target=reranker.rerank, args=(QUERY, DOCS))
        busy.start()
        time.sleep(0.3)  # the one slot is taken
        pid = os.fork()
        if pid == 0:  # the child: only this thread; the parent's call is not its to finish
            code = 1
            try:
                results = reranker.rerank(QUERY, DOCS)
                code = 0 if [r.index for r in results] == order(DOCS) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        busy.join(10)
        reranker.close()
    assert os.waitstatus_to_exitcode(status) == 0  # before: "waiting for a free request slot"


# -- F26: abandoned chunks of an injected client's call give their slots back at once -------


def test_an_injected_clients_abandoned_chunks_free_their_slots_and_threads() -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if "fail" in body["documents"]:
            await asyncio.sleep(0.3)  # every chunk is on its own new connection by then
            return as_json({"message": "bad chunk"}, 400)
        await asyncio.sleep(5)
        return as_json(ranked(body))

    with asgi(handler) as server, httpx.Client(timeout=30) as client:
        reranker = VLLMReranker(
            base_url=server.url, http_client=client, max_batch=1, max_concurrency=4
        )
        took = []
        for call_number in range(4):
            started = time.monotonic()
            with pytest.raises(ProviderError, match="HTTP 400"):
                reranker.rerank(QUERY, ["fail", "slow 1", "slow 2", "slow 3"])
            took.append(time.monotonic() - started)
            if call_number == 0:  # new connections: their sockets are shut, workers end
                time.sleep(0.5)
                workers = sum(t.name.startswith("rerank") for t in threading.enumerate())
        free = reranker._slots._free
    print(f"\nfailed calls over an injected client: {[round(t, 2) for t in took]}s")
    assert free == 4  # before: 0, and the next call waited ~20 s for a slot
    assert max(took) < 1.5
    assert workers == 0  # before: 3 per call, each until its read ended


# -- F28: an injected AsyncClient belongs to one event loop --------------------------------


def test_an_injected_async_client_on_a_second_loop_is_a_configuration_error() -> None:
    with asgi(ok_handler()) as server:
        client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))
        reranker = VLLMReranker(base_url=server.url, http_async_client=client)
        assert [r.index for r in asyncio.run(reranker.arerank(QUERY, DOCS))] == order(DOCS)
        for _ in range(2):  # before: RuntimeError('Event loop is closed') now and then
            with pytest.raises(ConfigurationError, match="one per event loop|per event loop"):
                asyncio.run(reranker.arerank(QUERY, DOCS))


def test_an_injected_async_client_is_refused_on_a_new_loop_after_its_first_loop_is_gone() -> None:
    """Before: refused or not depending on whether the first loop had been garbage-collected."""
    with asgi(ok_handler()) as server:
        client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))
        reranker = VLLMReranker(base_url=server.url, http_async_client=client)
        asyncio.run(reranker.arerank(QUERY, DOCS))
        gc.collect()  # the first loop is gone now
        with pytest.raises(ConfigurationError, match="per event loop"):
            asyncio.run(reranker.arerank(QUERY, DOCS))


# -- attack F5: a sync call on the private loop's own thread is refused, not a deadlock ------

NESTED_SYNC_CALLS = """
import concurrent.futures, httpx
from milvus_rerank import ConfigurationError, VLLMReranker
from milvus_rerank.providers.api.clients import BackgroundLoop

def ok(request):
    return httpx.Response(200, json={"results": [{"index": 0, "relevance_score": 1.0}]})

def client():
    return httpx.Client(transport=httpx.MockTransport(ok))

inner = VLLMReranker(base_url="http://vllm:8000", http_client=client())

class Hooked(VLLMReranker):
    def _payload(self, query, documents):
        inner.rerank(query, documents)  # runs on the private loop, as sync calls' hooks do
        return super()._payload(query, documents)

try:
    Hooked(base_url="http://vllm:8000", http_client=client()).rerank("q", ["d"])
except ConfigurationError as exc:
    print("rerank:", exc)
print("still serving:", len(inner.rerank("q", ["d"])))
closed = concurrent.futures.Future()

def close_there():
    try:
        inner.close()
        closed.set_result(None)
    except BaseException as exc:
        closed.set_exception(exc)

BackgroundLoop.get().call_soon_threadsafe(close_there)
try:
    closed.result(timeout=20)
except ConfigurationError as exc:
    print("close:", exc)
"""


def test_a_sync_call_on_the_private_loops_thread_is_refused() -> None:
    # Before: the nested rerank() waited for the loop it blocked, hanging every sync call of
    # the process past any deadline; close() there blocked the loop 10 s, then TimeoutError.
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", NESTED_SYNC_CALLS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert time.monotonic() - started < 30
    assert out[0].startswith("rerank: VLLMReranker: a sync rerank() was called on")
    assert out[1] == "still serving: 1"
    assert out[2].startswith("close: VLLMReranker: a sync close() was called on")
