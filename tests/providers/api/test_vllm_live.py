"""``VLLMReranker`` against real vLLM CPU servers (``make test-vllm``; skipped otherwise).

One server serves a tiny cross-encoder built in the session; ``CrossEncoderReranker`` on the
same checkpoint is the reference: both apply the sigmoid to the one logit, so the scores agree.
A second serves a tiny Qwen3-Reranker as vLLM's Qwen3 example does (``QWEN3_OVERRIDES``);
``VLLMReranker`` sends it the model card's prompt (``Qwen3Reranker.vllm_templates``) and the
local ``Qwen3Reranker`` on the same checkpoint is the reference.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from milvus_rerank import (
    CrossEncoderReranker,
    ProviderError,
    Qwen3Reranker,
    RerankResult,
    RetryPolicy,
    VLLMReranker,
)
from tests.conftest import (
    LIVE_DOCUMENTS,
    LIVE_QUERY,
    PYMILVUS_DOCUMENTS,
    QWEN3_INSTRUCTION,
)
from tests.providers.api.specs import SPECS
from tests.vllm_server import MAX_MODEL_LEN, QWEN3_MAX_MODEL_LEN, LiveVLLM

pytestmark = pytest.mark.vllm

ROUTES = ["/v1/rerank", "/rerank", "/v2/rerank"]


@pytest.fixture(scope="module")
def local(live_vllm: LiveVLLM) -> CrossEncoderReranker:
    return CrossEncoderReranker(str(live_vllm.model_dir), device="cpu")


def ranking(results: list[RerankResult]) -> list[int]:
    return [r.index for r in results]


def assert_same(
    live: list[RerankResult], reference: list[RerankResult], tolerance: float = 1e-5
) -> None:
    assert ranking(live) == ranking(reference)
    assert [r.score for r in live] == pytest.approx([r.score for r in reference], abs=tolerance)
    assert [r.text for r in live] == [r.text for r in reference]


@pytest.mark.parametrize("route", ROUTES)
def test_rerank_matches_the_local_cross_encoder(
    live_vllm: LiveVLLM, local: CrossEncoderReranker, route: str
) -> None:
    with VLLMReranker(live_vllm.model, base_url=live_vllm.url, route=route) as live:
        results = live.rerank(LIVE_QUERY, LIVE_DOCUMENTS)
    assert_same(results, local.rerank(LIVE_QUERY, LIVE_DOCUMENTS))
    assert sorted(ranking(results)) == list(range(len(LIVE_DOCUMENTS)))


@pytest.mark.parametrize("route", ROUTES)
async def test_arerank_with_top_n(
    live_vllm: LiveVLLM, local: CrossEncoderReranker, route: str
) -> None:
    async with VLLMReranker(live_vllm.model, base_url=live_vllm.url, route=route) as live:
        results = await live.arerank(LIVE_QUERY, LIVE_DOCUMENTS, top_n=2)
    assert_same(results, local.rerank(LIVE_QUERY, LIVE_DOCUMENTS, top_n=2))


def test_a_server_without_model_name_uses_its_own(
    live_vllm: LiveVLLM, local: CrossEncoderReranker
) -> None:
    with VLLMReranker(base_url=live_vllm.url) as live:
        assert_same(
            live.rerank(LIVE_QUERY, LIVE_DOCUMENTS), local.rerank(LIVE_QUERY, LIVE_DOCUMENTS)
        )


async def test_chunks_past_max_batch_merge_like_one_request(
    live_vllm: LiveVLLM, local: CrossEncoderReranker
) -> None:
    docs = [f"{d} {w}" for w in ("", "cat", "paris") for d in LIVE_DOCUMENTS]  # 15, chunks of 2
    chunked = VLLMReranker(live_vllm.model, base_url=live_vllm.url, max_batch=2)
    with chunked:
        sync = chunked.rerank(LIVE_QUERY, docs, top_n=7)
    async with VLLMReranker(live_vllm.model, base_url=live_vllm.url, max_batch=2) as again:
        asynchronous = await again.arerank(LIVE_QUERY, docs, top_n=7)
    reference = local.rerank(LIVE_QUERY, docs, top_n=7)
    assert_same(sync, reference)
    assert_same(asynchronous, reference)


def test_truncate_prompt_tokens_matches_a_short_max_length(live_vllm: LiveVLLM) -> None:
    long_doc = " ".join(["paris is the capital of france"] * 40)  # ~240 tokens: over the limit
    docs = [long_doc, "berlin is in germany"]
    with VLLMReranker(live_vllm.model, base_url=live_vllm.url) as untruncated:
        with pytest.raises(ProviderError) as info:
            untruncated.rerank(LIVE_QUERY, docs)
    assert info.value.status_code == 400
    with VLLMReranker(live_vllm.model, base_url=live_vllm.url, truncate_prompt_tokens=32) as live:
        results = live.rerank(LIVE_QUERY, docs)
    reference = CrossEncoderReranker(str(live_vllm.model_dir), max_length=32, device="cpu")
    assert_same(results, reference.rerank(LIVE_QUERY, docs))
    assert MAX_MODEL_LEN > 32


def test_a_wrong_model_name_is_a_typed_error(live_vllm: LiveVLLM) -> None:
    with VLLMReranker(
        "no-such-model", base_url=live_vllm.url, retry=RetryPolicy(max_retries=0)
    ) as live:
        with pytest.raises(ProviderError, match="no-such-model") as info:
            live.rerank(LIVE_QUERY, LIVE_DOCUMENTS)
    assert info.value.status_code == 404
    assert info.value.provider == "vllm"


@pytest.mark.integration
def test_milvus_lite_reranks_through_vllm_like_rerank_hits(
    tmp_path: Path, live_vllm: LiveVLLM, local: CrossEncoderReranker
) -> None:
    pytest.importorskip("pymilvus")
    from pymilvus import MilvusClient

    from milvus_rerank.app.demo import (
        COLLECTION,
        DEMO_QUERY,
        build_demo_collection,
        load_demo_corpus,
    )
    from milvus_rerank.app.serve import create_app
    from milvus_rerank.app.serve.testing import BackgroundServer
    from milvus_rerank.integrations.milvus import rerank_hits, server_side_ranker

    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    search = {
        "anns_field": "sparse",
        "output_fields": ["text"],
        "search_params": {"metric_type": "BM25"},
    }
    vllm = VLLMReranker(live_vllm.model, base_url=live_vllm.url)
    client = MilvusClient(str(tmp_path / "through-vllm.db"))
    try:
        build_demo_collection(client, load_demo_corpus())
        # Milvus reranks every first-stage match, then cuts to limit: take them all here.
        candidates = client.search(COLLECTION, data=[DEMO_QUERY], limit=100, **search)
        ranker = server_side_ranker(vllm, [DEMO_QUERY], target="milvus-lite")
        assert ranker.params["base_url"] == f"{live_vllm.url}/v2"
        through_vllm = client.search(
            COLLECTION, data=[DEMO_QUERY], limit=6, ranker=ranker, **search
        )
        with BackgroundServer(create_app(local, model_name=live_vllm.model)) as served:
            ranker = server_side_ranker(
                VLLMReranker(live_vllm.model, base_url=served.url),
                [DEMO_QUERY],
                target="milvus-lite",
            )
            through_serve = client.search(
                COLLECTION, data=[DEMO_QUERY], limit=6, ranker=ranker, **search
            )
    finally:
        client.close()
    with vllm:
        client_side = rerank_hits(vllm, DEMO_QUERY, candidates, top_n=6)[0]
    assert len(candidates[0]) > 6
    ids = [h["id"] for h in client_side]
    assert [h["id"] for h in through_vllm[0]] == ids
    assert [h["id"] for h in through_serve[0]] == ids
    scores = [h["rerank_score"] for h in client_side]
    assert [h["distance"] for h in through_vllm[0]] == pytest.approx(scores, abs=1e-5)
    assert [h["distance"] for h in through_serve[0]] == pytest.approx(scores, abs=1e-5)


# -- Qwen3-Reranker served by vLLM, the prompt written by the client ------------------------

#: The local Qwen3Reranker and vLLM's float32 CPU kernels agree to this (the issue's bar).
QWEN3_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def local_qwen3(vllm_qwen3_dir: Path) -> Qwen3Reranker:
    return Qwen3Reranker(str(vllm_qwen3_dir), device="cpu")


def qwen3_on_vllm(server: LiveVLLM, instruction: str | None = None, **kwargs: Any) -> VLLMReranker:
    return VLLMReranker(
        server.model,
        base_url=server.url,
        **Qwen3Reranker.vllm_templates(instruction),
        **kwargs,
    )


@pytest.mark.parametrize("route", ROUTES)
def test_qwen3_on_vllm_matches_the_local_qwen3_reranker(
    live_vllm_qwen3: LiveVLLM, local_qwen3: Qwen3Reranker, route: str
) -> None:
    with qwen3_on_vllm(live_vllm_qwen3, route=route) as live:
        results = live.rerank(LIVE_QUERY, LIVE_DOCUMENTS)
    assert_same(results, local_qwen3.rerank(LIVE_QUERY, LIVE_DOCUMENTS), QWEN3_TOLERANCE)
    assert sorted(ranking(results)) == list(range(len(LIVE_DOCUMENTS)))


@pytest.mark.parametrize("route", ROUTES)
async def test_qwen3_on_vllm_arerank_with_top_n(
    live_vllm_qwen3: LiveVLLM, local_qwen3: Qwen3Reranker, route: str
) -> None:
    async with qwen3_on_vllm(live_vllm_qwen3, route=route) as live:
        results = await live.arerank(LIVE_QUERY, LIVE_DOCUMENTS, top_n=2)
    reference = local_qwen3.rerank(LIVE_QUERY, LIVE_DOCUMENTS, top_n=2)
    assert_same(results, reference, QWEN3_TOLERANCE)


async def test_qwen3_on_vllm_with_a_custom_instruction(
    live_vllm_qwen3: LiveVLLM, local_qwen3: Qwen3Reranker
) -> None:
    task = local_qwen3.with_instruction(QWEN3_INSTRUCTION)
    reference = task.rerank(LIVE_QUERY, LIVE_DOCUMENTS)
    with qwen3_on_vllm(live_vllm_qwen3, QWEN3_INSTRUCTION) as live:
        sync = live.rerank(LIVE_QUERY, LIVE_DOCUMENTS)
    async with qwen3_on_vllm(live_vllm_qwen3, QWEN3_INSTRUCTION) as again:
        asynchronous = await again.arerank(LIVE_QUERY, LIVE_DOCUMENTS)
    assert_same(sync, reference, QWEN3_TOLERANCE)
    assert_same(asynchronous, reference, QWEN3_TOLERANCE)
    # The instruction reached the server: the model card's scores differently.
    card = {r.index: r.score for r in local_qwen3.rerank(LIVE_QUERY, LIVE_DOCUMENTS)}
    assert max(abs(r.score - card[r.index]) for r in sync) > 10 * QWEN3_TOLERANCE


async def test_qwen3_on_vllm_chunks_past_max_batch_merge_like_one_request(
    live_vllm_qwen3: LiveVLLM, local_qwen3: Qwen3Reranker
) -> None:
    docs = [f"{d} {w}" for w in ("", "cat", "paris") for d in LIVE_DOCUMENTS]  # 15, chunks of 2
    with qwen3_on_vllm(live_vllm_qwen3, max_batch=2) as live:
        sync = live.rerank(LIVE_QUERY, docs, top_n=7)
    async with qwen3_on_vllm(live_vllm_qwen3, max_batch=2) as again:
        asynchronous = await again.arerank(LIVE_QUERY, docs, top_n=7)
    reference = local_qwen3.rerank(LIVE_QUERY, docs, top_n=7)
    assert_same(sync, reference, QWEN3_TOLERANCE)
    assert_same(asynchronous, reference, QWEN3_TOLERANCE)


def test_qwen3_on_vllm_keeps_braces_and_unicode_in_the_text(
    live_vllm_qwen3: LiveVLLM, local_qwen3: Qwen3Reranker
) -> None:
    query = "what is {query} in 東京?"
    docs = ["{document} café", "naïve {0} }{", "paris is the capital of france"]
    with qwen3_on_vllm(live_vllm_qwen3, "Find {x} }{") as live:
        results = live.rerank(query, docs)
    reference = local_qwen3.with_instruction("Find {x} }{").rerank(query, docs)
    assert_same(results, reference, QWEN3_TOLERANCE)


def test_qwen3_on_vllm_needs_the_templates(
    live_vllm_qwen3: LiveVLLM, local_qwen3: Qwen3Reranker
) -> None:
    """vLLM adds no prompt: raw text scores differently from the model card."""
    with VLLMReranker(live_vllm_qwen3.model, base_url=live_vllm_qwen3.url) as raw:
        results = raw.rerank(LIVE_QUERY, LIVE_DOCUMENTS)
    card = {r.index: r.score for r in local_qwen3.rerank(LIVE_QUERY, LIVE_DOCUMENTS)}
    assert max(abs(r.score - card[r.index]) for r in results) > 10 * QWEN3_TOLERANCE


def _last_position_p_yes(model_dir: Path, ids: list[int]) -> float:
    """sigmoid(logit(yes) - logit(no)) at the last of ``ids``, straight from transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    yes, no = (tokenizer.convert_tokens_to_ids(t) for t in ("yes", "no"))
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return float(torch.sigmoid(logits[yes] - logits[no]))


def test_qwen3_on_vllm_truncation_cuts_the_prompt_s_end(
    live_vllm_qwen3: LiveVLLM, vllm_qwen3_dir: Path, local_qwen3: Qwen3Reranker
) -> None:
    """The limit the docs state: vLLM keeps a prompt's first tokens, the closing turn is lost.

    The local ``Qwen3Reranker`` cuts the body only, so the two differ once vLLM truncates.
    """
    from transformers import AutoTokenizer

    long_doc = " ".join(["paris is the capital of france"] * 100)  # over the server's limit
    with qwen3_on_vllm(live_vllm_qwen3) as untruncated:
        with pytest.raises(ProviderError) as info:
            untruncated.rerank(LIVE_QUERY, [long_doc])
    assert info.value.status_code == 400
    limit = 96
    with qwen3_on_vllm(live_vllm_qwen3, truncate_prompt_tokens=limit) as live:
        (result,) = live.rerank(LIVE_QUERY, [long_doc])
    templates = Qwen3Reranker.vllm_templates()
    prompt = templates["query_template"].format(query=LIVE_QUERY)
    prompt += templates["document_template"].format(document=long_doc)
    ids = AutoTokenizer.from_pretrained(str(vllm_qwen3_dir))(prompt)["input_ids"]
    assert len(ids) > QWEN3_MAX_MODEL_LEN > limit
    assert result.score == pytest.approx(
        _last_position_p_yes(vllm_qwen3_dir, ids[:limit]), abs=QWEN3_TOLERANCE
    )
    card = Qwen3Reranker(str(vllm_qwen3_dir), device="cpu", max_length=limit)
    (kept_frame,) = card.rerank(LIVE_QUERY, [long_doc])
    assert abs(result.score - kept_frame.score) > 10 * QWEN3_TOLERANCE


def test_qwen3_on_vllm_is_refused_as_a_milvus_function(live_vllm_qwen3: LiveVLLM) -> None:
    from milvus_rerank import ConfigurationError

    with qwen3_on_vllm(live_vllm_qwen3) as live:
        for target in ("milvus", "milvus-lite"):
            with pytest.raises(ConfigurationError, match="--reranker qwen3"):
                live.milvus_function_params(target)  # type: ignore[arg-type]


# Recording: `make record-vllm` runs these with --record-mode=rewrite, writing cassettes/vllm/
# from the live server; under plain `make test-vllm` they replay what is committed.
CASSETTES = Path(__file__).resolve().parents[3] / "cassettes" / "vllm"
#: The root the cassettes name (tests/providers/api/specs.py), whatever port the live server had.
RECORDED_ROOT = SPECS["vllm"].host


@pytest.fixture(scope="module")
def vcr_config(live_vllm: LiveVLLM, live_vllm_qwen3: LiveVLLM) -> dict[str, Any]:
    def canonical_root(request: Any) -> Any:
        for server in (live_vllm, live_vllm_qwen3):
            request.uri = request.uri.replace(server.url, RECORDED_ROOT)
        return request

    return {
        "filter_headers": ["authorization", "cookie", "set-cookie", "host"],
        "match_on": ["method", "scheme", "host", "port", "path", "query", "json_body"],
        "before_record_request": canonical_root,
        "decode_compressed_response": True,
    }


@pytest.fixture
def vcr_cassette_dir() -> str:
    return str(CASSETTES)


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank.yaml")
def test_record_rerank(live_vllm: LiveVLLM, local: CrossEncoderReranker) -> None:
    docs = LIVE_DOCUMENTS[:3]
    with VLLMReranker(live_vllm.model, base_url=live_vllm.url) as live:
        assert_same(live.rerank(LIVE_QUERY, docs), local.rerank(LIVE_QUERY, docs))


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_chunked.yaml")
def test_record_chunked_rerank(live_vllm: LiveVLLM, local: CrossEncoderReranker) -> None:
    from milvus_rerank.app.demo import DEMO_QUERY

    with VLLMReranker(live_vllm.model, base_url=live_vllm.url, max_batch=2) as live:
        results = live.rerank(DEMO_QUERY, PYMILVUS_DOCUMENTS)
    assert_same(results, local.rerank(DEMO_QUERY, PYMILVUS_DOCUMENTS))


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_unknown_model.yaml")
def test_record_unknown_model(live_vllm: LiveVLLM) -> None:
    with VLLMReranker(
        "no-such-model", base_url=live_vllm.url, retry=RetryPolicy(max_retries=0)
    ) as live:
        with pytest.raises(ProviderError, match="no-such-model") as info:
            live.rerank(LIVE_QUERY, LIVE_DOCUMENTS[:3])
    assert info.value.status_code == 404


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_qwen3.yaml")
def test_record_qwen3_rerank(live_vllm_qwen3: LiveVLLM, local_qwen3: Qwen3Reranker) -> None:
    with qwen3_on_vllm(live_vllm_qwen3) as live:
        results = live.rerank(LIVE_QUERY, LIVE_DOCUMENTS)
    assert_same(results, local_qwen3.rerank(LIVE_QUERY, LIVE_DOCUMENTS), QWEN3_TOLERANCE)


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_qwen3_instruction_chunked.yaml")
def test_record_qwen3_instruction_chunked(
    live_vllm_qwen3: LiveVLLM, local_qwen3: Qwen3Reranker
) -> None:
    from milvus_rerank.app.demo import DEMO_QUERY

    with qwen3_on_vllm(live_vllm_qwen3, QWEN3_INSTRUCTION, max_batch=2) as live:
        results = live.rerank(DEMO_QUERY, PYMILVUS_DOCUMENTS)
    reference = local_qwen3.with_instruction(QWEN3_INSTRUCTION).rerank(
        DEMO_QUERY, PYMILVUS_DOCUMENTS
    )
    assert_same(results, reference, QWEN3_TOLERANCE)
