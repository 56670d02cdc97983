"""The CUDA path of every local family: fp32 on the GPU equals the CPU, half precision stays close.

Skipped (with its reason) where torch sees no CUDA device, as on CI; run on a GPU machine with
``python -m pytest tests/providers/local/test_cuda.py``. ``MILVUS_RERANK_TEST_DEVICE=cpu`` runs the
same checks with the CPU as the "accelerator" (half precision on the CPU), which checks the
tests themselves on a machine without a GPU. Each family's tiny checkpoint has spread-out
random weights, so agreement in scores and ranking is not trivial.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

DEVICE = os.environ.get("MILVUS_RERANK_TEST_DEVICE", "cuda")
if DEVICE.startswith("cuda") and not torch.cuda.is_available():  # pragma: no cover
    pytest.skip("torch sees no CUDA device on this machine", allow_module_level=True)

from milvus_rerank.core.registry import reranker_class  # noqa: E402
from milvus_rerank.providers.local import tiny  # noqa: E402
from milvus_rerank.providers.local.reranker import LocalReranker  # noqa: E402
from tests.conftest import CORPUS, PYMILVUS_DOCUMENTS  # noqa: E402

QUERY = "what event in 1956 marked the birth of artificial intelligence"
DOCS = [*PYMILVUS_DOCUMENTS, *CORPUS, "ai", "milvus is a vector database " * 60]

#: registry key -> (tiny builder, the half dtype ``dtype="auto"`` picks on CUDA)
FAMILIES: dict[str, tuple[Callable[..., Path], str]] = {
    "cross-encoder": (tiny.build_tiny_cross_encoder, "float16"),
    "bge": (tiny.build_tiny_bge, "float16"),
    "qwen3": (tiny.build_tiny_qwen3_reranker, "bfloat16"),
    "bge-llm": (tiny.build_tiny_gemma_reranker, "bfloat16"),
    "mxbai-v2": (tiny.build_tiny_mxbai_v2_reranker, "bfloat16"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cuda")
    texts = [QUERY, *DOCS]
    return {
        key: build(root / key, texts=texts, initializer_range=0.2)
        for key, (build, _) in FAMILIES.items()
    }


def make(key: str, path: Path, **options: Any) -> LocalReranker:
    cls: Any = reranker_class(key)
    reranker: LocalReranker = cls(str(path), **options)
    return reranker


def worst(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("key", FAMILIES)
def test_fp32_on_the_device_equals_the_cpu(checkpoints: dict[str, Path], key: str) -> None:
    cpu = make(key, checkpoints[key], device="cpu")._score(QUERY, DOCS)
    gpu = make(key, checkpoints[key], device=DEVICE, dtype="float32")
    assert gpu.load().runner.load().device == DEVICE
    scores = gpu._score(QUERY, DOCS)
    assert worst(scores, cpu) <= 1e-4, f"{key}: {worst(scores, cpu):.2e}"
    assert len(set(cpu)) > len(DOCS) // 2  # the weights spread the scores


@pytest.mark.parametrize("key", FAMILIES)
def test_auto_dtype_is_the_family_half_and_stays_close(
    checkpoints: dict[str, Path], key: str
) -> None:
    if not DEVICE.startswith("cuda"):
        pytest.skip("dtype='auto' picks half precision on CUDA only")
    cpu = make(key, checkpoints[key], device="cpu")._score(QUERY, DOCS)
    half = make(key, checkpoints[key], device=DEVICE)
    loaded = half.runner.load()
    assert loaded.dtype == FAMILIES[key][1]
    assert next(loaded.model.parameters()).dtype == getattr(torch, FAMILIES[key][1])
    scores = half._score(QUERY, DOCS)
    assert all(isinstance(s, float) for s in scores)
    # Half precision moves a probability by about 1e-3; far more means a broken path.
    assert worst(scores, cpu) <= 5e-2, f"{key}: {worst(scores, cpu):.2e}"
    top = max(range(len(cpu)), key=cpu.__getitem__)
    assert scores[top] >= sorted(scores)[-3]  # the CPU's best stays near the top


@pytest.mark.parametrize("key", FAMILIES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_batching_and_padding_do_not_change_half_scores(
    checkpoints: dict[str, Path], key: str, dtype: str
) -> None:
    one = make(key, checkpoints[key], device=DEVICE, dtype=dtype, batch_size=1)
    many = make(key, checkpoints[key], device=DEVICE, dtype=dtype, batch_size=16)
    a, b = one._score(QUERY, DOCS), many._score(QUERY, DOCS)
    assert worst(a, b) <= 2e-2, f"{key} {dtype}: {worst(a, b):.2e}"


def test_half_precision_asked_for_stays_close(checkpoints: dict[str, Path]) -> None:
    key = "qwen3"
    cpu = make(key, checkpoints[key], device="cpu")._score(QUERY, DOCS)
    half = make(key, checkpoints[key], device=DEVICE, dtype="bfloat16")._score(QUERY, DOCS)
    assert worst(half, cpu) <= 5e-2


def test_no_token_budget_on_gpus(checkpoints: dict[str, Path]) -> None:
    reranker = make("cross-encoder", checkpoints["cross-encoder"], device=DEVICE)
    assert reranker.runner.token_budget("cuda") is None
    assert reranker.runner.token_budget("cpu") is not None
