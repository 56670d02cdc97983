"""Server-side rerank Functions built from a reranker's configuration, run on Milvus Lite."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

pytest.importorskip("pymilvus")

from milvus_rerank import (  # noqa: E402
    BGEReranker,
    CohereReranker,
    ConfigurationError,
    CrossEncoderReranker,
    DashScopeReranker,
    InvalidInputError,
    JinaReranker,
    MixedbreadReranker,
    NVIDIAReranker,
    PineconeReranker,
    SiliconFlowReranker,
    TEIReranker,
    VLLMReranker,
    VoyageReranker,
)
from milvus_rerank.integrations.milvus import rerank_hits, server_side_params, server_side_ranker  # noqa: E402

Q = ["what is milvus"]
KEY = "sk-live-abcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize(
    ("reranker", "params"),
    [
        (
            VLLMReranker(base_url="http://vllm:8000/v1", truncate_prompt_tokens=256, max_batch=64),
            {
                "provider": "vllm",
                "endpoint": "http://vllm:8000",
                "max_client_batch_size": 64,
                "truncate_prompt_tokens": 256,
            },
        ),
        (
            TEIReranker(base_url="http://tei:8080", truncate=True, truncation_direction="Left"),
            {
                "provider": "tei",
                "endpoint": "http://tei:8080",
                "max_client_batch_size": 32,
                "truncate": True,
                "truncation_direction": "Left",
            },
        ),
        (
            CohereReranker("rerank-v3.5", api_key=KEY, max_tokens_per_doc=512, max_batch=128),
            {
                "provider": "cohere",
                "model_name": "rerank-v3.5",
                "max_client_batch_size": 128,
                "max_tokens_per_doc": 512,
            },
        ),
        (
            VoyageReranker("rerank-2.5", api_key=KEY, truncation=False, max_batch=100),
            {
                "provider": "voyageai",
                "model_name": "rerank-2.5",
                "max_client_batch_size": 100,
                "truncation": False,
            },
        ),
    ],
)
def test_milvus_server_params(reranker: object, params: dict[str, object]) -> None:
    built = server_side_params(reranker, Q)  # type: ignore[arg-type]
    assert built == {"reranker": "model", "queries": Q, **params}
    assert KEY not in str(built) and "api_key" not in built  # never a raw key for a server
    assert "maxBatch" not in built


@pytest.mark.parametrize(
    ("reranker", "params"),
    [
        (
            SiliconFlowReranker(
                "BAAI/bge-reranker-v2-m3", api_key=KEY, max_chunks_per_doc=8, overlap_tokens=40
            ),
            {
                "provider": "siliconflow",
                "model_name": "BAAI/bge-reranker-v2-m3",
                "max_chunks_per_doc": 8,
                "overlap_tokens": 40,
            },
        ),
        (
            SiliconFlowReranker(api_key=KEY, max_batch=64),
            {
                "provider": "siliconflow",
                "model_name": "BAAI/bge-reranker-v2-m3",
                "max_client_batch_size": 64,
            },
        ),
        (
            DashScopeReranker("qwen3-rerank", api_key=KEY),
            {"provider": "ali", "model_name": "qwen3-rerank", "max_client_batch_size": 500},
        ),
    ],
)
def test_siliconflow_and_dashscope_params(reranker: object, params: dict[str, object]) -> None:
    built = server_side_params(reranker, Q)  # type: ignore[arg-type]
    assert built == {"reranker": "model", "queries": Q, **params}
    assert KEY not in str(built) and "api_key" not in built


@pytest.mark.parametrize("cls", [SiliconFlowReranker, DashScopeReranker])
def test_siliconflow_and_dashscope_keys_go_by_credential_name(cls: type) -> None:
    params = server_side_params(cls(api_key=KEY), Q, credential="prod_key")
    assert params["credential"] == "prod_key" and KEY not in str(params)


@pytest.mark.parametrize(
    "reranker",
    [
        SiliconFlowReranker(api_key=KEY, base_url="https://api.siliconflow.com"),
        SiliconFlowReranker(base_url="http://127.0.0.1:9997"),
        DashScopeReranker(api_key=KEY, base_url="https://dashscope-intl.aliyuncs.com"),
    ],
)
def test_siliconflow_and_dashscope_elsewhere_are_never_swapped_for_the_public_api(
    reranker: object,
) -> None:
    with pytest.raises(ConfigurationError, match="milvus.yaml") as info:
        server_side_params(reranker, Q)  # type: ignore[arg-type]
    assert reranker.base_url in str(info.value)  # type: ignore[attr-defined]
    assert KEY not in str(info.value)


@pytest.mark.parametrize(
    "reranker",
    [
        MixedbreadReranker(api_key=KEY),
        NVIDIAReranker(api_key=KEY),
        NVIDIAReranker(base_url="http://nim:8000"),
        PineconeReranker(api_key=KEY),
    ],
)
def test_apis_milvus_cannot_call_point_to_rerank_hits(reranker: object) -> None:
    name = type(reranker).__name__
    with pytest.raises(ConfigurationError, match=f"cannot call a {name}") as info:
        server_side_params(reranker, Q)  # type: ignore[arg-type]
    assert "rerank_hits" in str(info.value) and KEY not in str(info.value)


@pytest.mark.parametrize(
    "reranker",
    [
        MixedbreadReranker(api_key=KEY),
        NVIDIAReranker(api_key=KEY),
        PineconeReranker(api_key=KEY),
        SiliconFlowReranker(api_key=KEY),
        DashScopeReranker(api_key=KEY),
    ],
)
def test_milvus_lite_refuses_the_new_apis(reranker: object) -> None:
    with pytest.raises(ConfigurationError, match="only server-side rerank provider is 'cohere'"):
        server_side_params(reranker, Q, target="milvus-lite")  # type: ignore[arg-type]


def test_credential_names_a_server_side_secret() -> None:
    params = server_side_params(CohereReranker(api_key=KEY), Q, credential="cohere_prod")
    assert params["credential"] == "cohere_prod" and KEY not in str(params)


def test_a_keyed_vllm_needs_a_credential_name() -> None:
    with pytest.raises(ConfigurationError, match="credential"):
        server_side_params(VLLMReranker(base_url="http://vllm:8000", api_key=KEY), Q)
    params = server_side_params(VLLMReranker(base_url="http://v:1", api_key=KEY), Q, credential="v")
    assert KEY not in str(params)


def test_milvus_lite_params_speak_cohere_v2() -> None:
    vllm = server_side_params(
        VLLMReranker(base_url="http://127.0.0.1:8000", model_name="tiny"), Q, target="milvus-lite"
    )
    assert vllm == {
        "reranker": "model",
        "queries": Q,
        "provider": "cohere",
        "model_name": "tiny",
        "api_key": "EMPTY",
        "base_url": "http://127.0.0.1:8000/v2",
    }
    cohere = server_side_params(CohereReranker(api_key=KEY), Q, target="milvus-lite")
    assert cohere["base_url"] == "https://api.cohere.com/v2" and cohere["api_key"] == KEY


@pytest.mark.parametrize(
    ("reranker", "target", "match"),
    [
        (JinaReranker(api_key=KEY), "milvus", "cannot call a JinaReranker"),
        (TEIReranker(base_url="http://tei:1"), "milvus-lite", "only server-side rerank provider"),
        (VoyageReranker(api_key=KEY), "milvus-lite", "only server-side rerank provider"),
        (VLLMReranker(base_url="http://v:1"), "zilliz", "target must be"),
    ],
)
def test_combinations_milvus_cannot_run(reranker: object, target: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        server_side_params(reranker, Q, target=target)  # type: ignore[arg-type]


def test_local_rerankers_point_to_serve(tiny_models: dict[str, Path]) -> None:
    for local in (BGEReranker(str(tiny_models["bge"])), CrossEncoderReranker("x")):
        with pytest.raises(ConfigurationError, match="milvus-rerank serve"):
            server_side_params(local, Q)


@pytest.mark.parametrize(
    "reranker",
    [
        CohereReranker(base_url="http://127.0.0.1:8000/v2"),
        VoyageReranker(api_key=KEY, base_url="https://voyage-proxy.internal"),
    ],
)
def test_a_self_hosted_cohere_or_voyage_is_never_swapped_for_the_public_api(
    reranker: object,
) -> None:
    with pytest.raises(ConfigurationError, match="milvus.yaml") as info:
        server_side_params(reranker, Q)  # type: ignore[arg-type]
    assert reranker.base_url in str(info.value)  # type: ignore[attr-defined]
    # the same public API under its versioned root is still the public API
    public = server_side_params(
        CohereReranker(api_key=KEY, base_url="https://api.cohere.com/v2"), Q
    )
    assert public["provider"] == "cohere"


def test_milvus_module_names_no_provider() -> None:
    """Provider knowledge lives in the providers: milvus.py asks the reranker's hook."""
    import milvus_rerank.integrations.milvus

    source = Path(milvus_rerank.integrations.milvus.__file__).read_text(encoding="utf-8").lower()
    providers = ("cohere", "vllm", "tei", "voyage", "jina", "siliconflow", "dashscope")
    named = [p for p in (*providers, "pinecone", "nvidia", "mixedbread") if p in source]
    assert named == []
    assert "type: ignore" not in source and "httpreranker" not in source


def test_a_bad_credential_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="credential"):
        server_side_params(VLLMReranker(base_url="http://v:1"), Q, credential="")


def test_params_are_built_fresh_each_time() -> None:
    reranker = VLLMReranker(base_url="http://v:1")
    first = server_side_params(reranker, Q)
    first["endpoint"] = "http://elsewhere:1"
    assert server_side_params(reranker, Q)["endpoint"] == "http://v:1"


@pytest.mark.parametrize("queries", [[], [""], "  ", [None]])
def test_queries_are_checked(queries: object) -> None:
    with pytest.raises(InvalidInputError, match="queries"):
        server_side_params(VLLMReranker(base_url="http://v:1"), queries)  # type: ignore[arg-type]


def test_function_shape() -> None:
    from pymilvus import FunctionType

    fn = server_side_ranker(VLLMReranker(base_url="http://v:1"), Q, input_field="body")
    assert fn.type == FunctionType.RERANK and fn.input_field_names == ["body"]
    assert fn.params["provider"] == "vllm"


@pytest.mark.integration
def test_milvus_lite_reranks_through_serve_like_rerank_hits(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    from pymilvus import MilvusClient

    from milvus_rerank.app.demo import (
        COLLECTION,
        DEMO_QUERY,
        build_demo_collection,
        load_demo_corpus,
    )
    from milvus_rerank.app.serve import create_app
    from milvus_rerank.app.serve.testing import BackgroundServer

    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    local = CrossEncoderReranker(str(tiny_models["ce"]))
    search = {
        "anns_field": "sparse",
        "output_fields": ["text"],
        "search_params": {"metric_type": "BM25"},
    }
    with BackgroundServer(create_app(local, model_name="tiny")) as served:
        client = MilvusClient(str(tmp_path / "server-side.db"))
        try:
            build_demo_collection(client, load_demo_corpus())
            # Milvus reranks every first-stage match, then cuts to limit: take them all here.
            candidates = client.search(COLLECTION, data=[DEMO_QUERY], limit=100, **search)
            ranker = server_side_ranker(
                VLLMReranker(base_url=served.url, model_name="tiny"),
                [DEMO_QUERY],
                target="milvus-lite",
            )
            server = client.search(COLLECTION, data=[DEMO_QUERY], limit=6, ranker=ranker, **search)
        finally:
            client.close()
    client_side = rerank_hits(local, DEMO_QUERY, candidates, top_n=6)[0]
    assert [h["id"] for h in server[0]] == [h["id"] for h in client_side]
    assert [h["distance"] for h in server[0]] == pytest.approx(
        [h["rerank_score"] for h in client_side], abs=1e-5
    )


@pytest.mark.milvus_server
def test_full_milvus_server_reranks_through_an_endpoint(tmp_path: Path) -> None:
    uri, endpoint = os.environ.get("MILVUS_URI"), os.environ.get("MILVUS_RERANK_ENDPOINT")
    if not uri or not endpoint:
        pytest.skip(
            "needs MILVUS_URI (a Milvus 2.6+ server) and MILVUS_RERANK_ENDPOINT (a vLLM, TEI or "
            "`milvus-rerank serve` root that server can reach)"
        )
    from pymilvus import MilvusClient

    from milvus_rerank.app.demo import DEMO_QUERY, build_demo_collection, load_demo_corpus

    client = MilvusClient(uri=uri, token=os.environ.get("MILVUS_TOKEN", ""))
    name = "milvus_rerank_test"
    try:
        build_demo_collection(client, load_demo_corpus(), name=name)
        ranker = server_side_ranker(VLLMReranker(base_url=endpoint), [DEMO_QUERY])
        hits = client.search(
            name,
            data=[DEMO_QUERY],
            anns_field="sparse",
            limit=5,
            output_fields=["text"],
            search_params={"metric_type": "BM25"},
            ranker=ranker,
        )
        scores = [h["distance"] for h in hits[0]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    finally:
        client.drop_collection(name)
        client.close()
