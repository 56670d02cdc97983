"""The HTTP layer and each provider's mapping, over httpx.MockTransport (no network)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from milvus_rerank import (
    AuthenticationError,
    ConfigurationError,
    InvalidResponseError,
    Secret,
)
from tests.providers.api.mock_api import (
    DOCS,
    KEY,
    QUERY,
    Handler,
    answer_order,
    make,
    ok_handler,
)
from tests.providers.api.specs import (
    KEY_VARS,
    KEYED,
    SPECS,
    Spec,
    answer_items,
    request_documents,
    score_key,
)

# -- what goes over the wire -----------------------------------------------------------------


def test_request_matches_the_documented_format(spec: Spec) -> None:
    seen: list[httpx.Request] = []
    make(spec, ok_handler(spec, seen)).rerank(QUERY, DOCS)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == spec.host + spec.path
    assert json.loads(request.content) == spec.request(QUERY, DOCS)
    assert request.headers["content-type"] == "application/json"
    assert request.headers[spec.auth_header] == spec.auth(KEY)


async def test_async_request_is_the_same(spec: Spec) -> None:
    seen: list[httpx.Request] = []
    results = await make(spec, ok_handler(spec, seen)).arerank(QUERY, DOCS)
    assert json.loads(seen[0].content) == spec.request(QUERY, DOCS)
    assert [r.index for r in results] == [i for i, _ in answer_order(DOCS)]


def test_answer_maps_back_by_index(spec: Spec) -> None:
    results = make(spec, ok_handler(spec)).rerank(QUERY, DOCS, top_n=3)
    expected = answer_order(DOCS)[:3]
    assert [(r.index, r.score, r.text) for r in results] == [(i, s, DOCS[i]) for i, s in expected]


def test_empty_documents_make_no_request(spec: Spec) -> None:
    seen: list[httpx.Request] = []
    assert make(spec, ok_handler(spec, seen)).rerank(QUERY, []) == []
    assert seen == []


def test_provider_options_reach_the_body() -> None:
    cases = [
        (SPECS["cohere"], {"max_tokens_per_doc": 512}, {"max_tokens_per_doc": 512}),
        (SPECS["voyage"], {"truncation": False}, {"truncation": False}),
        (SPECS["vllm"], {"truncate_prompt_tokens": 64}, {"truncate_prompt_tokens": 64}),
        (
            SPECS["tei"],
            {"raw_scores": True, "truncate": True, "truncation_direction": "Left"},
            {"raw_scores": True, "truncate": True, "truncation_direction": "Left"},
        ),
    ]
    for spec, options, fields in cases:
        seen: list[httpx.Request] = []
        make(spec, ok_handler(spec, seen), **options).rerank(QUERY, DOCS)
        body = json.loads(seen[0].content)
        assert {k: body[k] for k in fields} == fields, spec.name


def test_vllm_without_model_or_key_sends_neither() -> None:
    seen: list[httpx.Request] = []
    spec = SPECS["vllm"]
    reranker = spec.cls(
        base_url="http://127.0.0.1:9",
        http_client=httpx.Client(transport=httpx.MockTransport(ok_handler(spec, seen))),
    )
    reranker.rerank(QUERY, DOCS)
    assert json.loads(seen[0].content) == {"query": QUERY, "documents": DOCS}
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize(
    ("name", "base_url", "url"),
    [
        ("cohere", "https://api.cohere.com/", "https://api.cohere.com/v2/rerank"),
        ("cohere", "http://localhost:8000/v2", "http://localhost:8000/v2/rerank"),
        ("vllm", "http://localhost:8000/v1", "http://localhost:8000/v1/rerank"),
        ("vllm", "http://localhost:8000/v2", "http://localhost:8000/v2/rerank"),
        ("vllm", "http://localhost:8000", "http://localhost:8000/v1/rerank"),
        ("tei", "http://localhost:8080/", "http://localhost:8080/rerank"),
        ("voyage", "https://api.voyageai.com/v1", "https://api.voyageai.com/v1/rerank"),
    ],
)
def test_base_url_is_a_root_and_versions_are_not_doubled(
    name: str, base_url: str, url: str
) -> None:
    assert SPECS[name].cls(base_url=base_url, api_key="test-key").url == url


@pytest.mark.parametrize("base_url", ["", "localhost:8000", "ftp://x", "http://"])
def test_bad_base_url_is_a_configuration_error(base_url: str) -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        SPECS["vllm"].cls(base_url=base_url)


def test_self_hosted_servers_need_base_url() -> None:
    for name in ("vllm", "tei"):
        with pytest.raises(ConfigurationError, match="needs base_url"):
            SPECS[name].cls()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"max_concurrency": 0},
        {"max_batch": 0},
        {"model_name": ""},
        {"retry": 3},
        {"max_tokens_per_doc": 0},
    ],
)
def test_bad_options_are_named(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(kwargs))):
        SPECS["cohere"].cls(api_key="test-key", **kwargs)


# -- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KEYED)
def test_missing_key_is_one_clear_error(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigurationError, match=SPECS[name].env or "") as info:
        SPECS[name].cls()
    assert "api_key" in str(info.value)


@pytest.mark.parametrize(
    ("name", "var"),
    [
        ("cohere", "COHERE_API_KEY"),
        ("cohere", "CO_API_KEY"),
        ("voyage", "VOYAGE_API_KEY"),
        ("jina", "JINA_API_KEY"),
        ("jina", "JINAAI_API_KEY"),
        ("vllm", "VLLM_API_KEY"),
        ("mixedbread", "MXBAI_API_KEY"),
        ("nvidia", "NVIDIA_API_KEY"),
        ("pinecone", "PINECONE_API_KEY"),
        ("siliconflow", "SILICONFLOW_API_KEY"),
        ("dashscope", "DASHSCOPE_API_KEY"),
    ],
)
def test_key_from_environment(name: str, var: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for other in KEY_VARS:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(var, KEY)
    seen: list[httpx.Request] = []
    spec = SPECS[name]
    reranker = spec.cls(
        **spec.kwargs,
        http_client=httpx.Client(transport=httpx.MockTransport(ok_handler(spec, seen))),
    )
    reranker.rerank(QUERY, DOCS)
    assert seen[0].headers[spec.auth_header] == spec.auth(KEY)


def test_a_developers_provider_variables_are_not_seen_by_tests() -> None:
    # conftest clears them: before, a CO_API_URL or COHERE_API_KEY exported in the shell sent
    # the Cohere tests elsewhere, with another key (10 tests failed with both set).
    from tests.conftest import PROVIDER_ENV

    read = {spec.cls.base_url_env for spec in SPECS.values()} - {None}
    read |= {var for spec in SPECS.values() for var in spec.cls.env_vars}
    assert read <= set(PROVIDER_ENV)  # a new provider's variables are cleared too
    assert [var for var in PROVIDER_ENV if var in os.environ] == []


def test_cohere_compatible_server_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    monkeypatch.delenv("CO_API_KEY", raising=False)
    assert SPECS["cohere"].cls(base_url="http://127.0.0.1:8000/v2").api_key is None


GATEWAY = "https://cohere-gateway.example.com"


def cohere_through_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[httpx.Request]:
    """One Cohere call built from the environment alone (``env``), as pymilvus-model's is."""
    for var in (*KEY_VARS, "CO_API_URL"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    spec, seen = SPECS["cohere"], []
    transport = httpx.MockTransport(ok_handler(spec, seen))
    spec.cls(**spec.kwargs, http_client=httpx.Client(transport=transport)).rerank(QUERY, DOCS)
    return seen


def test_cohere_sends_to_co_api_url_with_co_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # cohere.ClientV2 (pymilvus-model's CohereRerankFunction) posts to CO_API_URL with
    # CO_API_KEY: migrated traffic keeps going to that gateway, with that key.
    seen = cohere_through_env(monkeypatch, CO_API_URL=GATEWAY + "/", CO_API_KEY=KEY)
    assert str(seen[0].url) == GATEWAY + "/v2/rerank"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    both = cohere_through_env(
        monkeypatch, CO_API_URL=GATEWAY, CO_API_KEY=KEY, COHERE_API_KEY="sk-other-" + "x" * 20
    )
    assert both[0].headers["authorization"] == f"Bearer {KEY}"  # the SDK's pair, as it sends


def test_cohere_api_key_never_goes_to_a_co_api_url_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = cohere_through_env(monkeypatch, CO_API_URL=GATEWAY, COHERE_API_KEY=KEY)
    assert str(seen[0].url) == GATEWAY + "/v2/rerank"
    assert "authorization" not in seen[0].headers
    monkeypatch.setenv("CO_API_KEY", KEY)
    explicit = SPECS["cohere"].cls(base_url="https://other.example.com")
    assert explicit.base_url == "https://other.example.com"  # base_url= wins over CO_API_URL
    assert explicit.api_key is None  # and a base_url of yours gets no key from the environment
    monkeypatch.setenv("CO_API_URL", "https://api.cohere.com")  # Cohere's own API: as always
    assert SPECS["cohere"].cls().api_key is not None


@pytest.mark.parametrize(
    ("co_api_url", "posted"),
    [
        ("https://api.cohere.com/v1", "https://api.cohere.com/v2/rerank"),
        ("https://api.cohere.ai/v1/", "https://api.cohere.ai/v2/rerank"),
        (GATEWAY + "/cohere", GATEWAY + "/cohere/v2/rerank"),
        (GATEWAY + "/v1", GATEWAY + "/v1/v2/rerank"),
        (GATEWAY + "/v2", GATEWAY + "/v2/rerank"),
    ],
)
def test_co_api_url_posts_where_the_cohere_sdk_posts(
    co_api_url: str, posted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Attack F7: the SDK (cohere-python 5.13.11 on, fix_base_url) drops /v1 from a URL of
    # Cohere's own and posts to <url>/v2/rerank; before, ".../v1" went to ".../v1/rerank",
    # Cohere's v1 API. A trailing /v2 is not doubled (the SDK's /v2/v2/rerank answers 404).
    seen = cohere_through_env(monkeypatch, CO_API_URL=co_api_url, CO_API_KEY=KEY)
    assert str(seen[0].url) == posted
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    lite = SPECS["cohere"].cls().milvus_function_params("milvus-lite")
    assert lite["base_url"] + "/rerank" == posted  # Milvus Lite's provider posts there too


@pytest.mark.parametrize("url", ["gateway.example.com", "https://user:hunter2-pass@gw.example.com"])
def test_a_bad_co_api_url_is_named(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CO_API_URL", url)
    with pytest.raises(ConfigurationError, match="CO_API_URL") as info:
        SPECS["cohere"].cls(api_key=KEY)
    assert "hunter2" not in str(info.value)


def test_key_never_shows(spec: Spec, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"message": f"invalid api token {KEY}"})

    reranker = make(spec, refuse)
    with pytest.raises(AuthenticationError) as info:
        reranker.rerank(QUERY, DOCS)
    for text in (
        repr(reranker),
        str(reranker),
        repr(reranker.api_key),
        str(info.value),
        repr(info.value),
        caplog.text,
        repr(vars(reranker)),
    ):
        assert KEY not in text
    assert "**********" in str(info.value)  # echoed by the server, scrubbed by us
    assert isinstance(reranker.api_key, Secret)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(reranker.api_key)


# -- answers that lie ------------------------------------------------------------------------


def lying(spec: Spec, corrupt: Callable[[list[dict[str, Any]]], Any]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        answer = spec.answer(answer_order(request_documents(json.loads(request.content))))
        items = answer_items(answer)
        replaced = corrupt(items)
        if replaced is not None:
            answer = replaced
        return httpx.Response(
            200, content=json.dumps(answer).encode(), headers={"content-type": "application/json"}
        )

    return handle


def _set(key: str, value: Any, position: int = 0) -> Callable[[list[dict[str, Any]]], None]:
    def corrupt(items: list[dict[str, Any]]) -> None:
        items[position][score_key(items[0]) if key == "score" else key] = value

    return corrupt


LIES: dict[str, Callable[[list[dict[str, Any]]], Any]] = {
    "index out of range": _set("index", 99),
    "negative index": _set("index", -1),
    "duplicate index": lambda items: items[1].update(index=items[0]["index"]),
    "missing result": lambda items: items.pop() and None,
    "extra result": lambda items: items.append(dict(items[0])),
    "string index": _set("index", "1"),
    "bool index": _set("index", True),
    "float index": _set("index", 1.0),
    "nan score": _set("score", math.nan),
    "inf score": _set("score", math.inf),
    "string score": _set("score", "0.5"),
    "null score": _set("score", None),
    "bool score": _set("score", True),
    "result not an object": lambda items: items.__setitem__(0, [0, 0.5]),
    "results not a list": lambda items: {"results": {"0": 1}, "data": {"0": 1}},
    "empty object": lambda items: {},
    "null body": lambda items: "null",
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_lying_answers_never_rank(spec: Spec, lie: str) -> None:
    corrupt = LIES[lie]
    if lie == "null body":
        handler: Handler = lambda request: httpx.Response(200, content=b"null")  # noqa: E731
    else:
        handler = lying(spec, corrupt)
    with pytest.raises(InvalidResponseError) as info:
        make(spec, handler).rerank(QUERY, DOCS)
    assert info.value.provider == spec.name


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
        (b'{"results": [{"index": 0, "relev', "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"", "application/json"),
    ],
)
def test_non_json_success_is_invalid_response(
    spec: Spec, content: bytes, content_type: str
) -> None:
    handler = lambda request: httpx.Response(  # noqa: E731
        200, content=content, headers={"content-type": content_type}
    )
    with pytest.raises(InvalidResponseError, match="not JSON"):
        make(spec, handler).rerank(QUERY, DOCS)
