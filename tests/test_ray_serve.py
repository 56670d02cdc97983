"""``milvus_rerank.ray_serve:app_builder`` on a local Ray instance on loopback (``make test-ray``).

One Ray instance for the module, Ray Serve's proxy on a free loopback port, a tiny
cross-encoder: the replicas answer every route as the local reranker scores, two replicas
share the load, a key is read from the environment and recorded nowhere in Ray, Ray's own
``serve run`` command deploys the builder, Milvus Lite's rerank Function reorders through it,
and a replica killed in a burst of a retrying client's queries loses none.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

from milvus_rerank import CohereReranker, CrossEncoderReranker, RetryPolicy  # noqa: E402
from milvus_rerank.app.demo import DEMO_QUERY, load_demo_corpus  # noqa: E402
from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder  # noqa: E402
from milvus_rerank.ray_serve import REPLICA_HEADER, app_builder  # noqa: E402
from tests.app.serve.milvus_client import MilvusCallError, milvus_rerank_call  # noqa: E402

pytestmark = pytest.mark.ray

KEY = "ray-test-key-0123456789abcdef"
KEY_VAR = "MILVUS_RERANK_TEST_RAY_KEY"
DOCS = [row["text"] for row in load_demo_corpus()]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _replica_pids(app: str) -> list[int]:
    """The processes of ``app``'s replicas (Ray titles them ``ray::ServeReplica:APP:...``)."""
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].startswith(f"ray::ServeReplica:{app}:"):
            pids.append(proc.pid)
    return sorted(pids)


def _running_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or status.status != "RUNNING":
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-tiny")
    return build_tiny_cross_encoder(root / "ce", texts=[DEMO_QUERY, *DOCS], initializer_range=0.3)


@pytest.fixture(scope="module")
def local(model_dir: Path) -> Iterator[CrossEncoderReranker]:
    with CrossEncoderReranker(str(model_dir), device="cpu") as reranker:
        yield reranker


@pytest.fixture(scope="module")
def ray_url() -> Iterator[tuple[str, Path]]:
    """A local Ray (its own temp dir, short for Ray's socket paths) and Serve's proxy URL."""
    from ray import serve

    patch = pytest.MonkeyPatch()
    patch.setenv(KEY_VAR, KEY)  # before ray.init: the workers inherit the driver's environment
    patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    temp = Path(tempfile.mkdtemp(prefix="mrr-ray-", dir="/tmp"))
    port, metrics = _free_port(), _free_port()
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(temp),
        _metrics_export_port=metrics,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        os.environ["MRR_TEST_RAY_METRICS"] = f"http://127.0.0.1:{metrics}/metrics"
        yield f"http://127.0.0.1:{port}", temp
    finally:
        serve.shutdown()
        ray.shutdown()
        patch.undo()
        os.environ.pop("MRR_TEST_RAY_METRICS", None)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def served(ray_url: tuple[str, Path], model_dir: Path) -> str:
    """Two replicas of one CPU each, keyless, at the proxy's root."""
    from ray import serve

    args = {"reranker": "cross-encoder", "model_name": str(model_dir), "device": "cpu"}
    limits = {"max_wait_ms": "5", "max_documents": "50"}
    app = app_builder({**args, "num_replicas": "2", "num_cpus": "1", **limits})
    serve.run(app, name="rerank", route_prefix="/")
    return ray_url[0]


def test_the_builder_loads_no_model_in_the_driver(model_dir: Path) -> None:
    code = (
        "import sys; from milvus_rerank.ray_serve import app_builder; "
        f"app = app_builder({{'reranker': 'cross-encoder', 'model_name': {str(model_dir)!r}}}); "
        "print(type(app).__name__, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["Application", "False", "False"]


def test_every_route_scores_as_the_local_reranker(served: str, local: CrossEncoderReranker) -> None:
    docs = DOCS[:8]
    want = [(r.index, r.score) for r in local.rerank(DEMO_QUERY, docs)]

    def check(pairs: list[tuple[int, float]]) -> None:
        assert [i for i, _ in pairs] == [i for i, _ in want]
        assert [s for _, s in pairs] == pytest.approx([s for _, s in want], abs=1e-5)

    body = {"query": DEMO_QUERY, "documents": docs}
    cohere = httpx.post(f"{served}/v2/rerank", json=body, timeout=60)
    assert cohere.status_code == 200 and cohere.headers[REPLICA_HEADER]
    check([(r["index"], r["relevance_score"]) for r in cohere.json()["results"]])
    for path in ("/v1/rerank", "/rerank"):
        vllm = httpx.post(f"{served}{path}", json=body, timeout=60).json()["results"]
        check([(r["index"], r["relevance_score"]) for r in vllm])
    tei = httpx.post(f"{served}/rerank", json={"query": DEMO_QUERY, "texts": docs}, timeout=60)
    check([(r["index"], r["score"]) for r in tei.json()])
    assert httpx.get(f"{served}/health").json() == {"status": "ok", "model": "ce"}
    # The app's own limits (max_documents=50 given to the builder) and error shapes.
    too_many = {"query": DEMO_QUERY, "documents": ["x"] * 51}
    bad = httpx.post(f"{served}/v2/rerank", json=too_many, timeout=60)
    assert bad.status_code == 422 and "50" in bad.json()["message"]


def test_two_replicas_answer(served: str) -> None:
    body = {"query": DEMO_QUERY, "documents": DOCS[:4]}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: httpx.post(f"{served}/v2/rerank", json=body, timeout=60), range(40))
        )
    assert all(a.status_code == 200 for a in answers)
    assert len({a.headers[REPLICA_HEADER] for a in answers}) == 2
    pids = _replica_pids("rerank")
    assert len(pids) == 2 and os.getpid() not in pids  # the models load in the replicas


def test_each_replica_serves_its_own_metrics(served: str) -> None:
    test_two_replicas_answer(served)  # 40 requests of 4 documents from 8 clients, both replicas
    seen: dict[str, str] = {}
    for _ in range(40):  # Ray's proxy picks a replica per scrape: each answers for itself
        scrape = httpx.get(f"{served}/metrics", timeout=60)
        assert scrape.status_code == 200
        seen[scrape.headers[REPLICA_HEADER]] = scrape.text
        if len(seen) == 2:
            break
    assert len(seen) == 2
    mean_batches = []
    for text in seen.values():
        assert 'milvus_rerank_requests_total{route="/v2/rerank",status="200"}' in text
        assert "milvus_rerank_queue_pairs" in text and DEMO_QUERY not in text
        value = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("milvus_rerank_batch_pairs_")
        }
        mean_batches.append(
            value["milvus_rerank_batch_pairs_sum"] / value["milvus_rerank_batch_pairs_count"]
        )
    # 4 documents a request: a replica batches its own concurrent requests, so its forward
    # passes held more than one request.
    assert max(mean_batches) > 4


def test_rays_node_exporter_carries_every_replicas_metrics(served: str) -> None:
    body = {"query": DEMO_QUERY, "documents": DOCS[:4]}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda _: httpx.post(f"{served}/v2/rerank", json=body, timeout=60), range(40))
        )
    exporter = os.environ["MRR_TEST_RAY_METRICS"]
    deadline = time.monotonic() + 90  # the mirror copies every 5 s, Ray reports every few

    def series(text: str, name: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(f"ray_{name}{{")]

    while True:
        text = httpx.get(exporter, timeout=30).text
        pairs = series(text, "milvus_rerank_pairs_total")
        replicas = {line.split('replica="')[1].split('"')[0] for line in pairs}
        # Ray Serve owns a "route" tag: the app's route label arrives as "path".
        requests = [
            line[line.index("path=") :]
            for line in series(text, "milvus_rerank_requests_total")
            if 'path="/v2/rerank"' in line and 'status="200"' in line
        ]
        if len(replicas) == 2 and requests and series(text, "milvus_rerank_queue_pairs"):
            break
        assert time.monotonic() < deadline, (replicas, requests)
        time.sleep(1)


@pytest.mark.parametrize("provider", ["vllm", "tei"])
def test_milvus_providers_calls_conform_through_ray(
    served: str, local: CrossEncoderReranker, provider: str
) -> None:
    # Milvus replaces the endpoint's path with /rerank: the app sits at the proxy's root.
    docs = [*DOCS, *DOCS[:3], "", ""]  # two batches at Milvus's default 32, copies, empties
    scores = milvus_rerank_call(served, provider, DEMO_QUERY, docs, retry_wait=0.05)
    assert scores == pytest.approx(local.score_pairs([DEMO_QUERY] * len(docs), docs), abs=1e-5)


def test_the_key_comes_from_the_environment_and_ray_records_it_nowhere(
    ray_url: tuple[str, Path], model_dir: Path
) -> None:
    from ray import serve

    url, temp = ray_url
    args = {"reranker": "cross-encoder", "model_name": str(model_dir), "api_key_env": KEY_VAR}
    serve.run(app_builder({**args, "num_cpus": "0.5"}), name="keyed", route_prefix="/keyed")
    body = {"query": DEMO_QUERY, "documents": DOCS[:3]}
    assert httpx.post(f"{url}/keyed/v2/rerank", json=body, timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key-at-all"}
    assert httpx.post(f"{url}/keyed/v2/rerank", json=body, headers=wrong).status_code == 401
    reranker = CohereReranker(base_url=f"{url}/keyed", api_key=KEY, model_name="ce")
    assert len(reranker.rerank(DEMO_QUERY, DOCS[:3])) == 3
    # Milvus's Authorization from a Function's credential (here at /keyed, not Milvus's path).
    call = {"path": "/keyed/rerank", "retry_wait": 0.05}
    assert len(milvus_rerank_call(url, "tei", DEMO_QUERY, DOCS[:3], credential=KEY, **call)) == 3
    with pytest.raises(MilvusCallError):
        milvus_rerank_call(url, "tei", DEMO_QUERY, DOCS[:3], **call)
    assert KEY not in repr(serve.status())
    assert KEY not in repr(serve.get_app_handle("keyed"))
    leaks = [
        str(path)
        for path in temp.rglob("*")
        if path.is_file() and not path.is_socket() and KEY.encode() in path.read_bytes()
    ]
    assert leaks == []
    serve.delete("keyed")


def test_rays_serve_run_command_deploys_the_builder(
    ray_url: tuple[str, Path], model_dir: Path
) -> None:
    from ray import serve

    url, _ = ray_url
    address = ray.get_runtime_context().gcs_address
    command = [
        *(str(Path(sys.executable).parent / "serve"), "run", "--non-blocking"),
        *("--address", address, "--name", "cli", "--route-prefix", "/cli"),
        "milvus_rerank.ray_serve:app_builder",
        *("reranker=cross-encoder", f"model_name={model_dir}", "num_cpus=0.5"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    body = {"query": DEMO_QUERY, "documents": DOCS[:3]}
    answer = httpx.post(f"{url}/cli/v1/rerank", json=body, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["results"]) == 3
    bad = [*command[:-3], "reranker=cross-encoder", "num_replica=2"]
    refused = subprocess.run(bad, capture_output=True, text=True, timeout=240, check=False)
    assert refused.returncode != 0 and "did you mean 'num_replicas'" in refused.stderr
    serve.delete("cli")


def test_milvus_lite_rerank_function_through_ray_reorders_as_the_local_reranker(
    served: str, local: CrossEncoderReranker, tmp_path: Path
) -> None:
    pytest.importorskip("milvus_lite")
    from pymilvus import MilvusClient

    from milvus_rerank.app.lite import build_bm25_collection
    from milvus_rerank.integrations.milvus import rerank_hits, server_side_ranker

    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    rows = load_demo_corpus()
    ranker = server_side_ranker(
        CohereReranker(base_url=served, model_name="ce"), [DEMO_QUERY], target="milvus-lite"
    )
    bm25 = {"anns_field": "sparse", "search_params": {"metric_type": "BM25"}}
    client = MilvusClient(str(tmp_path / "ray.db"))
    try:
        build_bm25_collection(client, rows, "ray_rerank")
        first = client.search(
            "ray_rerank", data=[DEMO_QUERY], limit=len(rows), output_fields=["text"], **bm25
        )
        searched = client.search(
            "ray_rerank", data=[DEMO_QUERY], limit=5, output_fields=["text"], ranker=ranker, **bm25
        )
    finally:
        client.close()
    want = rerank_hits(local, DEMO_QUERY, first, top_n=5)[0]
    assert [h["id"] for h in searched[0]] == [h["id"] for h in want]
    assert [h["distance"] for h in searched[0]] == pytest.approx(
        [h["rerank_score"] for h in want], abs=1e-5
    )
    assert [h["id"] for h in want] != [h["id"] for h in first[0][:5]], "the rerank reorders"


def test_a_replica_killed_in_a_burst_loses_no_query(
    served: str, local: CrossEncoderReranker
) -> None:
    statuses: list[int] = []  # every attempt's answer, retried ones included
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    retry = RetryPolicy(max_retries=6, backoff_base=0.2, backoff_max=2.0, deadline=120.0)
    client = CohereReranker(
        base_url=served, model_name="ce", retry=retry, timeout=60.0, http_client=http
    )
    docs = DOCS * 2  # long enough that each replica has queries in flight when one dies
    queries = [f"{DEMO_QUERY} {n}" for n in range(100)]
    victim = _replica_pids("rerank")[0]

    def ask(query: str) -> tuple[list[tuple[int, float]], float]:
        start = time.monotonic()
        results = client.rerank(query, docs)
        return [(r.index, r.score) for r in results], time.monotonic() - start

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, query) for query in queries]
        while sum(f.done() for f in futures) < 20:
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        in_flight = sum(not f.done() for f in futures)
        answers = [f.result() for f in futures]  # any lost query raises here
    http.close()
    for query, (got, _) in zip(queries, answers, strict=True):
        want = [(r.index, r.score) for r in local.rerank(query, docs)]
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)
    failed = [s for s in statuses if s != 200]
    print(
        f"in flight at the kill {in_flight}; failed attempts {failed}; "
        f"longest query {max(t for _, t in answers):.2f} s"
    )
    start = time.monotonic()
    while True:  # Ray replaces the replica: two run again, the killed one among neither
        pids = _replica_pids("rerank")
        if len(pids) == 2 and victim not in pids and _running_replicas("rerank") == 2:
            break
        assert time.monotonic() - start < 120, "Ray did not replace the killed replica"
        time.sleep(0.2)
    print(f"replaced in {time.monotonic() - start:.1f} s")
    test_two_replicas_answer(served)
