"""Ray Serve figures (``python -m benchmarks ray``): scale-out, the Ray hop, a replica killed.

One run, side by side, on the MiniLM-shaped cross-encoder, every server with one torch
thread and one forward pass at a time (``batch_workers=1``): ``serve`` alone (``run_server``
in its own process), Ray Serve with 1 replica and with 2 replicas of one CPU each (two
applications deployed at once, measured in turns, the best of ``ROUNDS``); then a replica of
the two killed under a retrying client's load: queries lost and the longest query meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import Row
from benchmarks.local import MINILM_SHAPE, documents

CLIENTS = 8
REQUESTS = 96  # per measurement
DOCS_PER_REQUEST, CHARS = 8, 300
ROUNDS = 2
#: ``serve`` alone: ``run_server`` with one thread and one forward pass at a time.
SERVE_ALONE = """
import sys, torch
torch.set_num_threads(1)
from milvus_rerank import CrossEncoderReranker
from milvus_rerank.app.serve import run_server
reranker = CrossEncoderReranker(sys.argv[1], device="cpu").load()
run_server(reranker, port=int(sys.argv[2]), batch_workers=1)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _load(url: str, docs: list[str]) -> tuple[float, float, float]:
    """Pairs/s, p50 and p99 seconds of ``REQUESTS`` requests from ``CLIENTS`` clients."""
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for _ in range(4):
            await client.post("/v1/rerank", json={"query": "warm up", "documents": docs})

        async def worker(w: int) -> None:
            for i in range(REQUESTS // CLIENTS):
                started = time.perf_counter()
                body = {"query": f"query {w} {i} intelligence", "documents": docs}
                (await client.post("/v1/rerank", json=body)).raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(CLIENTS)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return len(latencies) * len(docs) / elapsed, statistics.median(latencies), p99


def _serve_alone(model: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", SERVE_ALONE, str(model), str(port)]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("serve did not start")


def _kill_under_load(url: str, docs: list[str]) -> tuple[int, int, float, int]:
    """Queries lost, queries sent, the longest one (s), failed attempts: a replica killed."""
    import psutil

    from milvus_rerank import CohereReranker, RetryPolicy

    statuses: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    retry = RetryPolicy(max_retries=6, backoff_base=0.2, backoff_max=2.0, deadline=120.0)
    client = CohereReranker(base_url=url, model_name="ce", retry=retry, http_client=http)
    victim = next(
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith("ray::ServeReplica:two:")
    )

    def ask(n: int) -> float:
        started = time.monotonic()
        client.rerank(f"query {n} intelligence", docs)
        return time.monotonic() - started

    queries = REQUESTS * 2
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(ask, n) for n in range(queries)]
        while sum(f.done() for f in futures) < queries // 4:
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        lost, longest = 0, 0.0
        for future in futures:
            try:
                longest = max(longest, future.result())
            except Exception:  # noqa: BLE001 - a lost query, whatever its error
                lost += 1
    http.close()
    return lost, queries, longest, sum(s != 200 for s in statuses)


def run() -> list[Row]:
    """The Ray rows (needs ``ray[serve]``: ``make test-ray`` installs it)."""
    import ray
    from ray import serve

    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder
    from milvus_rerank.ray_serve import app_builder

    root = Path(tempfile.mkdtemp(prefix="mrr-ray-bench-"))
    model = build_tiny_cross_encoder(root / "ce", **MINILM_SHAPE)
    docs = [d[:CHARS] for d in documents(DOCS_PER_REQUEST, seed=3)]
    alone_port = _free_port()
    alone = _serve_alone(model, alone_port)
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="mrr-ray-", dir="/tmp")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    results: dict[str, list[tuple[float, float, float]]] = {"alone": [], "one": [], "two": []}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = {"reranker": "cross-encoder", "model_name": str(model), "device": "cpu"}
        for name, replicas in (("one", "1"), ("two", "2")):
            args = {**base, "num_replicas": replicas, "num_cpus": "1", "batch_workers": "1"}
            serve.run(app_builder({**args, "name": name}), name=name, route_prefix=f"/{name}")
        urls = {
            "alone": f"http://127.0.0.1:{alone_port}",
            "one": f"http://127.0.0.1:{port}/one",
            "two": f"http://127.0.0.1:{port}/two",
        }
        for _ in range(ROUNDS):
            for name, url in urls.items():
                results[name].append(asyncio.run(_load(url, docs)))
        killed = _kill_under_load(urls["two"], docs)
    finally:
        serve.shutdown()
        ray.shutdown()
        alone.terminate()
        alone.wait(30)
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return _rows({k: max(v) for k, v in results.items()}, killed)


def _rows(
    best: dict[str, tuple[float, float, float]], killed: tuple[int, int, float, int]
) -> list[Row]:
    def cell(label: str, figures: tuple[float, float, float]) -> str:
        pairs, p50, p99 = figures
        return f"{label}: {pairs:,.0f} pairs/s, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"

    one, two, alone = best["one"], best["two"], best["alone"]
    lost, sent, longest, failed = killed
    return [
        Row.at_least(
            f"Ray scale-out: 2 replicas vs 1, 1 thread each, {CLIENTS} clients",
            cell("2 replicas", two),
            cell("1 replica", one),
            two[0] / one[0],
            1.6,
        ),
        Row.at_least(
            "the Ray hop: 1 Ray replica vs serve alone, 1 thread",
            cell("Ray", one),
            cell("serve", alone),
            one[0] / alone[0],
            0.9,
        ),
        Row.at_most(
            "a Ray replica killed under load: queries lost",
            f"{lost} of {sent} lost ({failed} attempts retried); longest {longest:.2f} s",
            "0 lost",
            float(lost),
            0.0,
        ),
    ]
