"""docs/deploy.md's nginx configuration in front of two ``serve`` replicas, called as Milvus calls.

The page's ``nginx`` block runs as written, its two ``server`` addresses swapped for two keyed
replicas on loopback: Milvus's requests through it score as the local reranker does, and keep
being answered, none lost, once a replica is stopped. Skipped where nginx is not installed.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette")

from milvus_rerank import CrossEncoderReranker  # noqa: E402
from milvus_rerank.app.serve import create_app  # noqa: E402
from milvus_rerank.app.serve.testing import BackgroundServer  # noqa: E402
from tests.app.serve.milvus_client import milvus_rerank_call  # noqa: E402
from tests.conftest import CORPUS  # noqa: E402

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

DOC = Path(__file__).resolve().parents[3] / "docs" / "deploy.md"
KEY = "replica-key-for-nginx"
QUERY = "what is milvus"


def doc_config() -> str:
    (block,) = re.findall(r"```nginx\n(.*?)```", DOC.read_text("utf-8"), re.DOTALL)
    return block


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_config(tmp: Path, replicas: list[str], port: int) -> Path:
    """The page's block with loopback addresses, inside the top level nginx needs to run."""
    servers = iter(replicas)
    block = re.sub(r"server \S+:8000", lambda _: f"server {next(servers)}", doc_config())
    block = block.replace("listen 8000;", f"listen 127.0.0.1:{port};")
    temp = "\n".join(
        f"    {name}_temp_path {tmp / name};" for name in ("client_body", "proxy", "fastcgi")
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"pid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'};\nevents {{}}\nhttp {{\n"
        f"    access_log off;\n{temp}\n    uwsgi_temp_path {tmp / 'uwsgi'};\n"
        f"    scgi_temp_path {tmp / 'scgi'};\n{block}}}\n"
    )
    return conf


@pytest.fixture(scope="module")
def local(tiny_models: dict[str, Path]) -> CrossEncoderReranker:
    return CrossEncoderReranker(str(tiny_models["ce"]))


@pytest.fixture
def fleet(
    local: CrossEncoderReranker, tmp_path: Path
) -> Iterator[tuple[str, list[BackgroundServer]]]:
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    replicas = [BackgroundServer(create_app(local, api_key=KEY)) for _ in range(2)]
    for replica in replicas:
        replica.start()
    port = free_port()
    conf = nginx_config(tmp_path, [f"127.0.0.1:{r.port}" for r in replicas], port)
    assert NGINX is not None
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                assert nginx.poll() is None, (tmp_path / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield url, replicas
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        for replica in replicas:
            replica.stop()


def test_milvus_through_nginx_loses_nothing_when_a_replica_stops(
    fleet: tuple[str, list[BackgroundServer]], local: CrossEncoderReranker
) -> None:
    url, replicas = fleet
    docs = [f"{text} {i}" for i, text in enumerate(CORPUS * 6)]
    expected = local.score_pairs([QUERY] * len(docs), docs)

    def call() -> list[float]:
        # retry_wait=60: a retry would outlast Milvus's 30 s deadline, so every batch must
        # be answered on its first attempt.
        return milvus_rerank_call(
            url,
            "tei",
            QUERY,
            docs,
            credential=KEY,
            params={"max_client_batch_size": 8},
            retry_wait=60,
        )

    for _ in range(3):
        assert call() == pytest.approx(expected, abs=1e-5)
    # least_conn spread the requests: nginx keeps a connection open to each replica.
    assert all(replica.connections > 0 for replica in replicas)
    replicas[0].stop()
    for _ in range(3):  # nginx passes each request the stopped replica refuses to the other
        assert call() == pytest.approx(expected, abs=1e-5)
