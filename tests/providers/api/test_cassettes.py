"""Replay each provider's recorded cassette, sync and async, offline.

Re-record against the real APIs with keys in the environment, e.g.::

    COHERE_API_KEY=... .venv/bin/pytest tests/providers/api/test_cassettes.py -k cohere \
        --record-mode=rewrite

The inputs come from the committed cassette; the expected ranking from the answers the
cassette holds once the call is made (the fresh recording, when re-recording), so the same
tests check a replay and a new recording. Auth headers are filtered out before anything is
written (see ``vcr_config``). vLLM's cassettes are recorded by ``make record-vllm``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from milvus_rerank import AuthenticationError, HTTPReranker, ProviderError, RetryPolicy, Usage
from tests.conftest import PYMILVUS_DOCUMENTS
from tests.providers.api.specs import (
    SPECS,
    answer_items,
    reported_usage,
    request_documents,
    request_query,
    score_key,
)
from tests.vllm_server import QWEN3_SERVED_NAME

CASSETTES = Path(__file__).resolve().parents[3] / "cassettes"
QUERY = "What event in 1956 marked the official birth of artificial intelligence as a discipline?"


def recorded(provider: str, name: str = "rerank.yaml") -> list[dict[str, Any]]:
    return yaml.safe_load((CASSETTES / provider / name).read_text())["interactions"]


def request_of(interaction: dict[str, Any]) -> tuple[str, list[str]]:
    body = json.loads(interaction["request"]["body"])
    return request_query(body), request_documents(body)


def played(cassette: Any) -> list[dict[str, Any]]:
    """The cassette's interactions as they stand now (replayed, or just recorded)."""
    out = []
    for request, response in cassette.data:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        answer = response["body"]["string"]
        answer = answer.decode() if isinstance(answer, bytes) else answer
        out.append({"request": {"body": body}, "response": {"body": {"string": answer}}})
    return out


def expected_ranking(
    interactions: list[dict[str, Any]], documents: list[str]
) -> list[tuple[int, float]]:
    """(global index, score) best first, read from the answers to chunks of ``documents``."""
    pairs: list[tuple[int, float]] = []
    for interaction in interactions:
        chunk = request_of(interaction)[1]
        offset = next(i for i in range(len(documents)) if documents[i : i + len(chunk)] == chunk)
        answer = json.loads(interaction["response"]["body"]["string"])
        pairs += [(offset + it["index"], it[score_key(it)]) for it in answer_items(answer)]
    return sorted(pairs, key=lambda p: (-p[1], p[0]))


def canonical_root(request: Any) -> Any:
    """Record a self-hosted server (``<PROVIDER>_BASE_URL``) under the root the specs replay."""
    for provider, spec in SPECS.items():
        live = os.environ.get(f"{provider.upper()}_BASE_URL", "").rstrip("/")
        if live and request.uri.startswith(live + spec.path):
            request.uri = spec.host + request.uri[len(live) :]
    return request


@pytest.fixture(scope="module")
def vcr_config() -> dict[str, Any]:
    return {
        "filter_headers": ["authorization", "x-api-key", "api-key", "cookie", "set-cookie", "host"],
        "match_on": ["method", "scheme", "host", "port", "path", "query", "json_body"],
        "before_record_request": canonical_root,
        "decode_compressed_response": True,
    }


@pytest.fixture
def vcr_cassette_dir(request: pytest.FixtureRequest) -> str:
    callspec = getattr(request.node, "callspec", None)
    return str(CASSETTES / callspec.params["provider"]) if callspec else str(CASSETTES)


def build(provider: str, **kwargs: Any) -> HTTPReranker:
    spec = SPECS[provider]
    options = dict(spec.kwargs)
    if spec.env is not None:  # a real key when re-recording, a placeholder when replaying
        options["api_key"] = os.environ.get(spec.env) or "replay-placeholder"
    base = os.environ.get(f"{provider.upper()}_BASE_URL")
    if base:
        options["base_url"] = base
    return spec.cls(**{**options, **kwargs})


PROVIDERS = sorted(SPECS)
CHUNKED = [p for p in PROVIDERS if (CASSETTES / p / "rerank_chunked.yaml").exists()]


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank.yaml")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_rerank_replays(provider: str, vcr: Any) -> None:
    query, docs = request_of(recorded(provider)[0])
    with build(provider) as reranker:
        results = reranker.rerank(query, docs)
    assert [(r.index, r.score) for r in results] == expected_ranking(played(vcr), docs)
    assert [r.text for r in results] == [docs[r.index] for r in results]


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank.yaml")
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_arerank_replays(provider: str, vcr: Any) -> None:
    query, docs = request_of(recorded(provider)[0])
    async with build(provider) as reranker:
        results = await reranker.arerank(query, docs, top_n=2)
    assert [(r.index, r.score) for r in results] == expected_ranking(played(vcr), docs)[:2]


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_chunked.yaml")
@pytest.mark.parametrize("provider", CHUNKED)
def test_chunked_rerank_replays(provider: str, vcr: Any) -> None:
    docs = PYMILVUS_DOCUMENTS
    with build(provider, max_batch=2) as reranker:
        results = reranker.rerank(QUERY, docs)
    assert [(r.index, r.score) for r in results] == expected_ranking(played(vcr), docs)


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_chunked.yaml")
@pytest.mark.parametrize("provider", CHUNKED)
async def test_chunked_arerank_replays(provider: str, vcr: Any) -> None:
    docs = PYMILVUS_DOCUMENTS
    async with build(provider, max_batch=2) as reranker:
        results = await reranker.arerank(QUERY, docs, top_n=3)
    assert [(r.index, r.score) for r in results] == expected_ranking(played(vcr), docs)[:3]


def answers(interactions: list[dict[str, Any]]) -> list[Any]:
    return [json.loads(i["response"]["body"]["string"]) for i in interactions]


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank.yaml")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_usage_replays(provider: str, vcr: Any) -> None:
    query, docs = request_of(recorded(provider)[0])
    with build(provider) as reranker:
        response = reranker.rerank_response(query, docs)
    assert response.usage == Usage(**reported_usage(SPECS[provider], answers(played(vcr))))
    assert response.usage.requests == 1 and response.answered_by == reranker.label


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_chunked.yaml")
@pytest.mark.parametrize("provider", CHUNKED)
async def test_chunked_usage_replays_summed(provider: str, vcr: Any) -> None:
    async with build(provider, max_batch=2) as reranker:
        response = await reranker.arerank_response(QUERY, PYMILVUS_DOCUMENTS)
    expected = reported_usage(SPECS[provider], answers(played(vcr)))
    assert response.usage == Usage(**expected)
    assert response.usage.requests == 2


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_unauthorized.yaml")
@pytest.mark.parametrize("provider", ["cohere"])
def test_unauthorized_replays_as_authentication_error(provider: str) -> None:
    query, docs = request_of(recorded(provider, "rerank_unauthorized.yaml")[0])
    with pytest.raises(AuthenticationError, match="invalid api token") as info:
        build(provider, api_key="wrong-key").rerank(query, docs)
    assert info.value.status_code == 401


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank_unknown_model.yaml")
@pytest.mark.parametrize("provider", ["vllm"])
def test_unknown_model_replays_as_provider_error(provider: str) -> None:
    interaction = recorded(provider, "rerank_unknown_model.yaml")[0]
    query, docs = request_of(interaction)
    model = json.loads(interaction["request"]["body"])["model"]
    with pytest.raises(ProviderError, match=model) as info:
        build(provider, model_name=model, retry=RetryPolicy(max_retries=0)).rerank(query, docs)
    assert info.value.status_code == 404


def test_cassettes_follow_each_documented_request() -> None:
    for provider, spec in SPECS.items():
        for path in sorted((CASSETTES / provider).glob("*.yaml")):
            for interaction in yaml.safe_load(path.read_text())["interactions"]:
                request = interaction["request"]
                assert request["method"] == "POST"
                assert request["uri"].endswith(spec.path), path
                body = json.loads(request["body"])
                query, docs = request_of(interaction)
                expected = spec.request(query, docs)
                if path.name == "rerank_unknown_model.yaml":
                    expected["model"] = body["model"]
                if path.name.startswith("rerank_qwen3"):  # the Qwen3 server's (replayed apart)
                    expected["model"] = QWEN3_SERVED_NAME
                assert body == expected, path


KEYLIKE = re.compile(r"(sk-|Bearer\s+[A-Za-z0-9]|[A-Za-z0-9_-]{32,})")
SECRET_HEADERS = {"authorization", "x-api-key", "api-key", "cookie", "set-cookie"}


def test_no_cassette_holds_a_key() -> None:
    files = sorted(CASSETTES.rglob("*.yaml"))
    assert len(files) >= len(SPECS)
    for path in files:
        for interaction in yaml.safe_load(path.read_text())["interactions"]:
            for part in ("request", "response"):
                headers = {k.lower(): v for k, v in interaction[part]["headers"].items()}
                assert not SECRET_HEADERS & set(headers), f"{path}: {part} has a secret header"
                for values in headers.values():
                    for value in values:
                        assert not KEYLIKE.search(str(value)), f"{path}: {value!r} looks like a key"
        assert "Bearer" not in path.read_text(), path
