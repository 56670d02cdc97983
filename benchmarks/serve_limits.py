"""``milvus-rerank serve`` under abuse: a 25 MB request beside a small one, 600 aborts, attacks.

The first rows run the server in this process (``BackgroundServer`` on 127.0.0.1) over the
MiniLM-shaped cross-encoder (random weights) on the CPU, with the body and document limits
raised for the large request. RSS is this process's (server and client together), so it
overstates the server's share. The attack rows run ``milvus-rerank serve`` with its defaults
and an API key in a child process (its own event loop and GIL, an open-file limit of 256)
over the 2-layer tiny cross-encoder, so that they time the server's event loop rather than a
model sharing two cores with the attackers: a small authorised request while 300 clients
send headers slowly, 4 clients send 1.8 MB bodies in 1-byte chunks, or 8 clients send 2 MB
bodies of nested empty arrays. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from benchmarks.common import Row
from milvus_rerank import CrossEncoderReranker
from milvus_rerank.app.serve import create_app
from milvus_rerank.app.serve.testing import BackgroundServer

MIB = 1024 * 1024
SMALL = {"query": "what is milvus", "documents": ["milvus is a vector database", "cat", "paris"]}
#: (workload name, documents, characters each): 25 MB of text either way.
LARGE = (("one 25 MB document", 1, 25 * 10**6), ("1,000 documents of 25 KB", 1000, 25_000))
ABORTS = 600
KEY = "bench-key-123456"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
#: The attack rows' open-file limit for the server, small to keep the slow-header attack small.
FD_LIMIT = 256


class _PeakRSS:
    """Samples this process's RSS every 20 ms in a thread while in the ``with`` block."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, process.memory_info().rss)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


async def _beside_large(url: str, count: int, chars: int) -> tuple[float, float, float]:
    """(small request latency while the large one runs, the large one's time, its size)."""
    text = ("milvus vector database rerank " * (chars // 30 + 1))[:chars]
    # Distinct documents: copies of one would be scored once (served as the library scores).
    documents = [f"{i} {text}"[:chars] for i in range(count)]
    large_body = {"query": "what is milvus", "documents": documents}
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        started = time.perf_counter()
        large = asyncio.ensure_future(client.post("/v1/rerank", json=large_body))
        await asyncio.sleep(0.3)  # the large body is on its way or being scored
        if large.done():
            raise RuntimeError("the large request ended before the small one began")
        small_started = time.perf_counter()
        small = await client.post("/v2/rerank", json=SMALL)
        small_took = time.perf_counter() - small_started
        small.raise_for_status()
        answer = await large
        answer.raise_for_status()
        return small_took, time.perf_counter() - started, len(text) * count / 10**6


async def _after_aborts(url: str) -> tuple[float, int]:
    """(next request's latency after ``ABORTS`` clients gave up, how many did time out)."""
    timed_out = 0
    limits = httpx.Limits(max_connections=ABORTS + 10)
    docs = [f"document {i} about milvus " * 20 for i in range(32)]
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:

        async def leave(i: int) -> None:
            nonlocal timed_out
            try:
                await client.post(
                    "/v1/rerank", json={"query": f"query {i}", "documents": docs}, timeout=0.5
                )
            except httpx.TimeoutException:
                timed_out += 1

        await asyncio.gather(*(leave(i) for i in range(ABORTS)))
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        (await client.post("/v2/rerank", json=SMALL, timeout=60)).raise_for_status()
        return time.perf_counter() - started, timed_out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _serve_child(model: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, int]]:
    """``milvus-rerank serve`` with its defaults and a key, in a child with ``FD_LIMIT`` files."""
    import resource

    port = _free_port()

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    command = [sys.executable, "-m", "milvus_rerank.app.cli", "serve", "--reranker"]
    command += ["cross-encoder", "--model", str(model), "--device", "cpu", "--port", str(port)]
    env = {**os.environ, "MILVUS_RERANK_API_KEY": KEY}
    child = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=limit_files,  # noqa: PLW1509 - no threads are started before the fork
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("milvus-rerank serve did not start")
            time.sleep(0.2)
        yield child, url, port
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)


def _small(url: str, timeout: float = 30) -> float:
    """Seconds a small authorised request takes (``timeout`` when it gets no answer)."""
    started = time.perf_counter()
    try:
        httpx.post(url + "/v2/rerank", json=SMALL, headers=AUTH, timeout=timeout)
    except httpx.HTTPError:
        return timeout
    return time.perf_counter() - started


def _fds(child: subprocess.Popen[bytes]) -> int:
    return len(os.listdir(f"/proc/{child.pid}/fd"))


def _slowloris(child: subprocess.Popen[bytes], url: str, port: int) -> tuple[float, int, int]:
    """(small request's worst seconds, server fds while 300 clients trickle headers, 12 s on)."""
    idle = _fds(child)
    sockets = []
    for _ in range(300):
        with contextlib.suppress(OSError):
            conn = socket.create_connection(("127.0.0.1", port), timeout=2)
            conn.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sockets.append(conn)
    time.sleep(1)
    worst = _small(url, timeout=5)
    started = time.monotonic()
    while time.monotonic() - started < 12:  # a header line every 2 s, past the 10 s timeout
        for conn in sockets:
            with contextlib.suppress(OSError):
                conn.sendall(b"X-a: b\r\n")
        worst = max(worst, _small(url, timeout=5))
        time.sleep(2)
    held = _fds(child) - idle
    for conn in sockets:
        conn.close()
    return worst, held, len(sockets)


def _chunked(url: str, port: int, clients: int = 4, seconds: float = 3.0) -> float:
    """A small request's worst seconds while ``clients`` send 1-byte chunks, again and again."""
    payload = json.dumps({"query": "q", "documents": ["a" * 100] * 3000}).encode()[:300_000]
    wire = b"".join(b"1\r\n%c\r\n" % byte for byte in payload) + b"0\r\n\r\n"
    head = (
        b"POST /v2/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" % KEY.encode()
    )
    stop = time.monotonic() + seconds

    def attack() -> None:
        while time.monotonic() < stop:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as c:
                c.settimeout(60)
                c.sendall(head + wire)
                c.recv(100)

    attackers = [threading.Thread(target=attack) for _ in range(clients)]
    for thread in attackers:
        thread.start()
    worst = 0.0
    while time.monotonic() < stop:
        time.sleep(0.3)
        worst = max(worst, _small(url))
    for thread in attackers:
        thread.join(120)
    return worst


async def _nested(url: str, clients: int = 8, bodies: int = 6) -> float:
    """A small request's worst seconds while ``clients`` send 2 MB of ``[[],[],...]`` each."""
    body = b'{"query":"q","documents":[' + b"[]," * 666_000 + b"[]]}"
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def attack() -> None:
            for _ in range(bodies):
                await client.post("/v2/rerank", content=body, headers=AUTH)

        async def probe() -> float:
            worst = 0.0
            for _ in range(6):
                await asyncio.sleep(0.4)
                started = time.perf_counter()
                await client.post("/v2/rerank", json=SMALL, headers=AUTH)
                worst = max(worst, time.perf_counter() - started)
            return worst

        *_, worst = await asyncio.gather(*(attack() for _ in range(clients)), probe())
    return float(worst)


def attack_rows(model: Path) -> list[Row]:
    """The attack rows, against a ``milvus-rerank serve`` child over the checkpoint ``model``
    (the 2-layer tiny cross-encoder in ``run``).

    Each row is the worst latency of a small request during the attack, against its median
    alone: the target is that the attack adds at most 1 s (the machine's own speed aside).
    """
    rows = []

    def delay(figure: str, worst: float, alone: float) -> Row:
        return Row.at_most(
            figure,
            f"{worst * 1000:.0f} ms",
            f"alone {alone * 1000:.0f} ms, + 1 s",
            max(0.0, worst - alone),
            1.0,
        )

    with _serve_child(model) as (child, url, port):
        _small(url)
        alone = sorted(_small(url) for _ in range(5))[2]
        worst, held, opened = _slowloris(child, url, port)
        figure = f"serve: small request while {opened} clients send headers slowly"
        rows.append(delay(f"{figure} (fd limit {FD_LIMIT})", worst, alone))
        rows.append(
            Row.at_most(
                "serve: descriptors those clients hold 12 s on (header timeout 10 s)",
                f"{max(0, held)}",
                "8",
                max(0, held) / 8,
                1.0,
            )
        )
        figure = "serve: small request while 4 clients send 1.8 MB in 1-byte chunks"
        rows.append(delay(figure, _chunked(url, port), alone))
        figure = "serve: small request while 8 clients send 2 MB bodies of nested arrays"
        rows.append(delay(figure, asyncio.run(_nested(url)), alone))
    return rows


def run() -> list[Row]:
    """The serve-limits rows."""
    from benchmarks.local import MINILM_SHAPE
    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    path = build_tiny_cross_encoder(Path(tempfile.mkdtemp()) / "ce", **MINILM_SHAPE)
    reranker = CrossEncoderReranker(str(path), device="cpu").load()
    app = create_app(reranker, max_body_bytes=30 * 10**6, max_batch_tokens=2048)
    rows = []
    with BackgroundServer(app) as server:
        httpx.post(server.url + "/v2/rerank", json=SMALL, timeout=60).raise_for_status()
        for name, count, chars in LARGE:
            idle = psutil.Process().memory_info().rss
            with _PeakRSS() as rss:
                small, large, mb = asyncio.run(_beside_large(server.url, count, chars))
            grew = (rss.peak - idle) / MIB
            rows.append(
                Row.at_most(
                    f"serve: small request beside a {mb:.0f} MB request ({name})",
                    f"{small * 1000:.0f} ms (large one {large:.1f} s)",
                    "1 s",
                    small,
                    1.0,
                )
            )
            rows.append(
                Row.at_most(
                    f"serve: peak RSS growth over idle, {name} (server and client)",
                    f"{grew:.0f} MiB",
                    "300 MiB",
                    grew / 300,
                    1.0,
                )
            )
        took, timed_out = asyncio.run(_after_aborts(server.url))
    rows.append(
        Row.at_most(
            f"serve: next request after {ABORTS} aborted clients ({timed_out} timed out)",
            f"{took * 1000:.0f} ms",
            "1 s",
            took,
            1.0,
        )
    )
    return rows + attack_rows(build_tiny_cross_encoder(Path(tempfile.mkdtemp()) / "tiny"))


if __name__ == "__main__":
    from benchmarks.common import table

    if sys.argv[1:] == ["--attacks"]:  # the attack rows only, over a fresh tiny checkpoint
        from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

        print(table(attack_rows(build_tiny_cross_encoder(Path(tempfile.mkdtemp()) / "tiny"))))
    else:
        print(table(run()))
