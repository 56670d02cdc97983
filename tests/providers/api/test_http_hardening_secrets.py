"""The HTTP layer keeps keys secret against hostile servers: scrubbed, checked, never shown."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
import traceback
import urllib.parse
from typing import Any

import httpx
import pytest

from milvus_rerank import (
    AuthenticationError,
    CohereReranker,
    ConfigurationError,
    DashScopeReranker,
    InvalidResponseError,
    JinaReranker,
    ProviderError,
    ProviderUnavailableError,
    RetryPolicy,
    VLLMReranker,
)
from tests.fakes import FaultPlan, FaultServer
from tests.providers.api.hostile_servers import (  # noqa: E402
    DOCS,
    FAST,
    KEY,
    MODES,
    QUERY,
    SLASHY,
    RawServer,
    Reply,
    as_json,
    asgi,
    b64,
    call,
    key_parts_in,
    ok_handler,
    pieces_of,
    ranked,
    raw_reply,
    texts_of,
)
from tests.providers.api.specs import SPECS

#: Loopback servers that misbehave, and seconds of waiting: outside the unit tier.
pytestmark = pytest.mark.slow

# -- 1, 2, 12: server text is scrubbed, then clipped ------------------------------------------

ECHOES: dict[str, Reply] = {
    "200 error field": as_json({"error": f"invalid token Bearer {KEY}"}),
    "200 score holds the key": as_json({"results": [{"index": 0, "relevance_score": KEY}]}),
    "200 index holds the key": as_json({"results": [{"index": f"x {KEY}", "relevance_score": 1}]}),
    "200 results hold the key": as_json({"results": {"token": "." * 40 + KEY}}),
    "200 plain text": (200, [(b"content-type", b"text/plain")], f"bad token {KEY}".encode()),
    "200 JSON-escaped key": (
        200,
        [(b"content-type", b"application/json")],
        b'{"error": "' + KEY.replace("-", "\\u002d").encode() + b'"}',
    ),
    "401 message": as_json({"message": f"invalid api token {KEY}"}, 401),
    "400 text, key across the old 200-char cut": (
        400,
        [(b"content-type", b"text/plain")],
        ("x" * 190 + KEY).encode(),
    ),
    "500 detail, key across the 300-char cut": as_json({"detail": "y " * 140 + KEY}, 500),
    "503 request id echoes the key": as_json({"message": "busy"}, 503, x_request_id=KEY),
    "422 nested detail": as_json({"detail": [{"msg": f"token {KEY} refused", "loc": ["h"]}]}, 422),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(ECHOES))
async def test_an_echoed_key_is_in_no_error(case: str, mode: str) -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        assert headers["authorization"] == f"Bearer {KEY}"
        return ECHOES[case]

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, api_key=KEY, retry=RetryPolicy(max_retries=0))
        with pytest.raises(ProviderError) as info:
            await call(reranker, mode)
        await reranker.aclose()
    for text in texts_of(info.value):
        assert key_parts_in(text) == []
    assert len(str(info.value)) <= 1000


@pytest.mark.parametrize("mode", MODES)
async def test_huge_and_overflowing_answers_are_bounded_typed_errors(mode: str) -> None:
    replies = [
        as_json({"message": "m" * 5_000_000}, 500),
        as_json({"results": [{"index": 0, "relevance_score": 10**400}]}),
        # 30,000 deep: past the parser's recursion limit, under the 64 KiB shape check
        (200, [(b"content-type", b"application/json")], b"[" * 30_000 + b"]" * 30_000),
    ]

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return replies.pop(0)

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, retry=RetryPolicy(max_retries=0))
        with pytest.raises(ProviderUnavailableError) as huge:
            await call(reranker, mode, ["d"])
        with pytest.raises(InvalidResponseError, match="not finite"):
            await call(reranker, mode, ["d"])
        with pytest.raises(InvalidResponseError, match="not JSON"):
            await call(reranker, mode, ["d"])
        await reranker.aclose()
    assert len(str(huge.value)) < 500


# -- 3, 14: base_url holds no credentials, query or fragment ----------------------------------

BAD_ROOTS = [
    "http://user:hunter2-secret@127.0.0.1:8000",
    "https://:hunter2-secret@api.example.com/v1",
    "http://hunter2-secret@127.0.0.1:8000",
    "ftp://user:hunter2-secret@127.0.0.1",
    "http://127.0.0.1:8000/?api_key=hunter2-secret",
    "http://127.0.0.1:8000/v1#hunter2-secret",
    "http://127.0.0.1:8000?",
]


@pytest.mark.parametrize("provider", sorted(SPECS))
@pytest.mark.parametrize("root", BAD_ROOTS)
def test_base_url_with_credentials_query_or_fragment_is_refused(provider: str, root: str) -> None:
    with pytest.raises(ConfigurationError, match="base_url") as info:
        SPECS[provider].cls(base_url=root, api_key=KEY)
    assert "hunter2" not in str(info.value)
    if "@" in root:
        assert "api_key" in str(info.value) and "headers" in str(info.value)


# -- 4: keys are checked once, at construction, and never shown -------------------------------

BAD_KEYS = {
    "newline inside": "sk-abcd\nefgh-12345678",
    "space inside": "sk-abcd efgh-12345678",
    "non-ASCII": "sk-clé-secrète-12345678",
    "control character": "sk-abcd\x7fefgh-1234",
    "blank": "   \t ",
    "too short": "sk-1",
}


@pytest.mark.parametrize("name", sorted(BAD_KEYS))
def test_bad_keys_are_configuration_errors_that_never_show_them(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = BAD_KEYS[name]
    with pytest.raises(ConfigurationError, match="from api_key") as info:
        JinaReranker(api_key=key)
    assert key.strip() not in str(info.value) or not key.strip()
    monkeypatch.setenv("JINA_API_KEY", key)
    with pytest.raises(ConfigurationError, match="JINA_API_KEY") as info:
        JinaReranker()
    assert key.strip() not in str(info.value) or not key.strip()


def test_a_pasted_key_is_stripped_and_sent_clean() -> None:
    headers: list[str] = []
    with asgi(ok_handler(headers)) as server:
        reranker = VLLMReranker(base_url=server.url, api_key=f"  {KEY}\n")
        reranker.rerank(QUERY, DOCS)
        reranker.close()
    assert headers == [f"Bearer {KEY}"]


@pytest.mark.parametrize(
    "headers",
    [{"X-Api-Key": "abc\r\nX-Injected: 1"}, {"X-Token": "clé-secrète-1234"}, {"Bad Name": "v"}],
)
def test_bad_extra_headers_are_refused_without_their_value(headers: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="header") as info:
        VLLMReranker(base_url="http://127.0.0.1:9", headers=headers)
    assert "Injected" not in str(info.value) and "secrète" not in str(info.value)


@pytest.mark.parametrize(
    "name",
    ["Content-Length", "transfer-encoding", "Connection", "Keep-Alive", "Upgrade", "TE"]
    + ["Trailer", "Expect", "Proxy-Connection"],
)
def test_headers_that_frame_the_request_are_refused(name: str) -> None:
    # Attack F4: before, Content-Length failed every call with a raw h11 LocalProtocolError,
    # and Transfer-Encoding put both it and Content-Length on the wire.
    with pytest.raises(ConfigurationError, match=f"headers may not set '{name}'") as info:
        VLLMReranker(base_url="http://127.0.0.1:9", headers={name: "chunked-1234567"})
    assert "chunked-1234567" not in str(info.value)


@pytest.mark.parametrize("mode", MODES)
async def test_a_host_header_reaches_the_server_for_virtual_hosting(mode: str) -> None:
    seen: list[str] = []

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        seen.append(headers["host"])
        scores = [{"index": i, "relevance_score": 0.5} for i in range(len(body["documents"]))]
        return as_json({"results": scores})

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, headers={"Host": "rerank.internal"})
        await call(reranker, mode)
        await reranker.aclose()
    assert seen == ["rerank.internal"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_secret_extra_header_is_kept_secret(mode: str) -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return as_json({"message": f"bad x-api-key {headers['x-api-key']}"}, 403)

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, headers={"X-Api-Key": KEY})
        with pytest.raises(ProviderError) as info:
            await call(reranker, mode)
        await reranker.aclose()
    for text in [*texts_of(info.value), repr(vars(reranker)), repr(reranker)]:
        assert key_parts_in(text) == []


# -- F2, F3, F4: any 8-character piece of the key, in any spelling a server echoes ----------

SPELLED: dict[str, Reply] = {
    "a prefix of the key": as_json({"message": f"invalid api key {SLASHY[:20]}..."}, 401),
    "the key past 64 KiB of spaces (cut mid-key)": raw_reply(
        401, (" " * 65_509 + f"Bearer {SLASHY} rejected").encode()
    ),
    "quote() keeping '/'": as_json({"message": "bad key " + urllib.parse.quote(SLASHY)}, 401),
    "lower-case percent-encoding": as_json(
        {"message": "bad " + urllib.parse.quote(SLASHY, safe="").lower()}, 401
    ),
    "PHP-escaped slashes, not JSON": raw_reply(
        401, ('{"message": "bad key ' + SLASHY.replace("/", "\\/") + '" trailing').encode()
    ),
    "base64 of the key": as_json({"message": "bad key " + b64(SLASHY)}, 401),
    "Basic base64(user:key)": as_json(
        {"message": "Authorization: Basic " + b64(f"api:{SLASHY}")}, 401
    ),
    "\\u escapes in a body cut at 64 KiB": raw_reply(
        401,
        ('{"message": "bad key ' + "".join(f"\\u{ord(c):04x}" for c in SLASHY) + '"').encode()
        + b" " * 70_000
        + b"}",
    ),
    "the key split between detail and request id": as_json(
        {"message": "bad key " + SLASHY[:14]}, 401, x_request_id=SLASHY[14:]
    ),
    "HTML entities": as_json({"message": "bad " + "".join(f"&#{ord(c)};" for c in SLASHY)}, 403),
    # attack F1: the spellings that went through before
    "base32 inside a longer text": as_json(
        {"message": "t=" + base64.b32encode(f"key:{SLASHY}".encode()).decode()}, 401
    ),
    "hex of UTF-16": as_json(
        {"message": "k=" + SLASHY.encode("utf-16-le").hex() + SLASHY.encode("utf-16-be").hex()},
        401,
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(SPELLED))
async def test_no_piece_of_the_key_survives_in_any_spelling(case: str, mode: str) -> None:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return SPELLED[case]

    with asgi(handler) as server:
        reranker = VLLMReranker(
            base_url=server.url, api_key=SLASHY, retry=RetryPolicy(max_retries=0)
        )
        with pytest.raises(ProviderError) as info:
            await call(reranker, mode)
        await reranker.aclose()
    for text in texts_of(info.value):
        assert pieces_of(SLASHY, text) == [], text[:300]
    assert len(str(info.value)) <= 1000


def test_scrubbing_a_64_kib_body_stays_fast() -> None:
    reranker = VLLMReranker(base_url="http://127.0.0.1:9", api_key=SLASHY)
    text = (SLASHY[:9] + "x" * 1000) * 64
    started = time.perf_counter()
    for _ in range(10):
        scrubbed = reranker._text.safe(text, 1000)
    took = (time.perf_counter() - started) / 10
    print(f"\nscrubbing 64 KiB of server text: {took * 1000:.1f} ms")
    assert pieces_of(SLASHY, scrubbed) == []
    assert took < 0.25


# -- F5: no public error keeps a context that reaches the key or the raw answer --------------


def chain_of(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def reachable_text(exc: BaseException) -> str:
    """What code walking the error chain's attributes can read (request headers, ``doc``)."""
    out = []
    for link in chain_of(exc):
        out += [repr(link), repr(vars(link)), str(getattr(link, "doc", ""))]
        request = getattr(link, "_request", None)
        if request is not None:
            out.append(repr(dict(request.headers)))
    return "\n".join(out)


@pytest.mark.parametrize("mode", MODES)
async def test_errors_keep_no_context_holding_the_request_or_the_raw_answer(mode: str) -> None:
    page = f"<html>Bearer {KEY}</html>".encode()
    replies: list[Reply] = [(200, [(b"content-type", b"text/html")], page)]

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if replies:
            return replies.pop(0)
        await asyncio.sleep(0.5)
        return as_json(ranked(body))

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, api_key=KEY, retry=FAST)
        with pytest.raises(InvalidResponseError) as not_json:
            await call(reranker, mode)
        task = asyncio.create_task(call(reranker, mode))
        await asyncio.sleep(0.2)
        if mode == "sync":
            reranker.close()
        else:
            await reranker.aclose()
        with pytest.raises(ProviderUnavailableError) as closed:
            await task
        await reranker.aclose()
    with RawServer(lambda conn: conn.close()) as dropping:
        reranker = VLLMReranker(base_url=dropping.url, api_key=KEY, retry=FAST)
        with pytest.raises(ProviderUnavailableError) as dropped:
            await call(reranker, mode)
        await reranker.aclose()
    for error in (not_json.value, closed.value, dropped.value):
        assert chain_of(error) == [error]  # no __cause__, no __context__
        assert key_parts_in(reachable_text(error)) == []


# -- F1: a provider's key from the environment goes to that provider only ------------------

KEY_VARS = {name: spec.env for name, spec in SPECS.items() if spec.env}


@pytest.mark.parametrize("provider", sorted(KEY_VARS))
def test_an_environment_key_goes_to_the_providers_own_api_only(
    provider: str, monkeypatch: pytest.MonkeyPatch, fault_server: FaultServer, fault_plan: FaultPlan
) -> None:
    spec = SPECS[provider]
    var = KEY_VARS[provider]
    assert var is not None
    monkeypatch.setenv(var, KEY)
    assert spec.cls(**spec.kwargs).api_key is not None  # the public API: read
    options = {**spec.kwargs, "base_url": fault_server.url, "retry": FAST}
    if provider in ("cohere", "voyage", "jina"):
        options["base_url"] += {"cohere": "/v2", "voyage": "/v1", "jina": "/v1"}[provider]
    reranker = spec.cls(**options)
    assert reranker.api_key is None
    reranker.rerank(QUERY, DOCS)
    reranker.close()
    sent = fault_plan.headers[-1]
    assert "authorization" not in sent and "api-key" not in sent  # before: the key went there
    explicit = spec.cls(**{**options, "api_key": "other-key-123"})
    explicit.rerank(QUERY, DOCS)
    explicit.close()
    assert "other-key-123" in fault_plan.headers[-1][spec.auth_header]


def test_a_self_hosted_servers_own_variable_is_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    assert VLLMReranker(base_url="http://10.1.2.3:8000").api_key is not None


def test_http_or_another_port_of_the_providers_host_is_not_its_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    for root in ("http://api.cohere.com", "https://api.cohere.com:8443", "https://x.cohere.com"):
        assert CohereReranker(base_url=root).api_key is None
    assert CohereReranker(base_url="https://api.cohere.com/v2").api_key is not None
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    regional = DashScopeReranker(base_url="https://dashscope-intl.aliyuncs.com")
    assert regional.api_key is not None  # a documented region of the provider's own API


def test_an_empty_api_key_is_refused_rather_than_falling_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    for make in (
        lambda: VLLMReranker(base_url="http://127.0.0.1:9", api_key=""),
        lambda: CohereReranker(base_url="http://127.0.0.1:9", api_key=""),
    ):
        with pytest.raises(ConfigurationError, match="api_key=None") as info:
            make()
        assert key_parts_in(str(info.value)) == []


async def test_a_401_says_which_variable_was_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHERE_API_KEY", KEY)

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return as_json({"message": "no key"}, 401)

    with asgi(handler) as server:
        reranker = CohereReranker(base_url=server.url, retry=FAST)
        with pytest.raises(AuthenticationError, match="COHERE_API_KEY is sent only") as info:
            await reranker.arerank(QUERY, DOCS)
        await reranker.aclose()
    assert key_parts_in(str(info.value)) == []


def test_a_key_over_plain_http_to_another_host_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="milvus_rerank")
    for _ in range(3):
        VLLMReranker(base_url="http://10.254.0.1:8000", api_key=KEY)
    VLLMReranker(base_url="http://127.0.0.1:8000", api_key=KEY)  # loopback: no warning
    VLLMReranker(base_url="http://10.254.0.2:8000")  # no key: no warning
    warnings = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert len(warnings) == 1 and "10.254.0.1" in warnings[0]
    assert key_parts_in(caplog.text) == []


def test_the_cli_sends_a_key_to_a_custom_base_url_only_from_key_env(
    monkeypatch: pytest.MonkeyPatch,
    fault_server: FaultServer,
    fault_plan: FaultPlan,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from milvus_rerank.app.cli import main

    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps(d) for d in DOCS))
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    monkeypatch.setenv("MY_UPSTREAM_KEY", "upstream-key-123")
    argv = ["rerank", "--reranker", "cohere", "--base-url", fault_server.url + "/v2"]
    argv += [QUERY, str(docs)]
    assert main(argv) == 0
    assert "authorization" not in fault_plan.headers[-1]
    assert main([*argv, "--key-env", "MY_UPSTREAM_KEY"]) == 0
    assert fault_plan.headers[-1]["authorization"] == "Bearer upstream-key-123"
    assert main([*argv, "--key-env", "NOT_SET_ANYWHERE"]) != 0
    assert key_parts_in(capsys.readouterr().err) == []


# -- attack F6: no local of a failure's frames shows the key ---------------------------------


def frame_locals(exc: BaseException) -> list[str]:
    """The repr of every local of every frame of ``exc``'s traceback (what Sentry, rich's
    ``show_locals`` and ``pytest --showlocals`` print), and ``traceback``'s own rendering."""
    shown = [
        "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())
    ]
    tb = exc.__traceback__
    while tb is not None:
        shown += [f"{name} = {value!r}" for name, value in tb.tb_frame.f_locals.items()]
        tb = tb.tb_next
    return shown


@pytest.mark.parametrize("client", ["own", "injected"])
@pytest.mark.parametrize("mode", MODES)
async def test_no_local_of_a_failures_frames_shows_the_key(mode: str, client: str) -> None:
    # Before: ``plan = Plan(..., headers={..., 'Authorization': 'Bearer <key>'})`` in
    # Call.score's frame, and ``outgoing = Outgoing(...)`` in Call._exchange's.
    replies = [as_json({"message": "bad request"}, 400), (200, [], b"{not json")]

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return replies.pop(0)

    with socket.create_server(("127.0.0.1", 0)) as closed:
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}"
    failures: list[BaseException] = []
    with asgi(handler) as server:
        for url in (server.url, server.url, refused):
            injected: dict[str, Any] = {}
            if client == "injected":
                injected = {"http_client": httpx.Client(), "http_async_client": httpx.AsyncClient()}
            reranker = VLLMReranker(
                base_url=url,
                api_key=KEY,
                headers={"X-Api-Key": KEY[::-1]},
                retry=RetryPolicy(max_retries=0),
                **injected,
            )
            with pytest.raises(ProviderError) as info:
                await call(reranker, mode)
            failures.append(info.value)
            await reranker.aclose()
            for c in injected.values():
                await c.aclose() if isinstance(c, httpx.AsyncClient) else c.close()
    assert [type(f) for f in failures] == [
        ProviderError,
        InvalidResponseError,
        ProviderUnavailableError,
    ]
    for failure in failures:
        shown = frame_locals(failure)
        assert any(line.startswith("plan = ") for line in shown)  # the frames were walked
        for line in shown:
            assert key_parts_in(line) == [] and key_parts_in(line[::-1]) == [], line[:200]


# -- F22: response headers echoing the key stay out of httpcore's DEBUG log ---------------


@pytest.mark.parametrize("mode", MODES)
async def test_response_headers_echoing_the_key_are_scrubbed_from_debug_logs(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        echo = [
            (b"location", f"http://evil.example/?k={KEY}".encode()),
            (b"x-echo", urllib.parse.quote(KEY).lower().encode()),
        ]
        return 307, echo, b""

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, api_key=KEY, retry=FAST)
        with pytest.raises(ProviderError):
            await call(reranker, mode)
        await reranker.aclose()
    logged = [r for r in caplog.records if r.name.startswith("httpcore")]
    assert any("receive_response_headers" in r.getMessage() for r in logged)
    assert key_parts_in("\n".join(r.getMessage() for r in caplog.records)) == []


# -- redirects are not followed, so the key goes nowhere else ---------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_redirect_to_another_host_is_not_followed(mode: str) -> None:
    elsewhere: list[str] = []
    with asgi(ok_handler(elsewhere)) as other:

        async def redirect(body: dict[str, Any], headers: dict[str, str]) -> Reply:
            location = (other.url + "/v1/rerank").encode()
            return 307, [(b"location", location)], b""

        with asgi(redirect) as server:
            reranker = VLLMReranker(base_url=server.url, api_key=KEY)
            with pytest.raises(ProviderError) as info:
                await call(reranker, mode)
            await reranker.aclose()
    assert info.value.status_code == 307
    assert elsewhere == []


# == the second outside attack (attack14b): what it found, each held now ======================
