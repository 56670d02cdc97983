"""The HTTP layer against hostile answers and options: bounded, decoded, checked."""

from __future__ import annotations

import base64
import contextlib
import gc
import gzip
import json
import socket
import threading
import time
from typing import Any

import psutil
import pytest

from milvus_rerank import (
    CohereReranker,
    ConfigurationError,
    InvalidResponseError,
    NVIDIAReranker,
    PineconeReranker,
    ProviderError,
    ProviderUnavailableError,
    RetryPolicy,
    TEIReranker,
    VLLMReranker,
    VoyageReranker,
)
from milvus_rerank.app.serve.testing import BackgroundServer
from tests.providers.api.hostile_servers import (  # noqa: E402
    DOCS,
    FAST,
    KEY,
    MODES,
    QUERY,
    RawServer,
    Reply,
    as_json,
    asgi,
    call,
    ok_handler,
    order,
    pieces_of,
    ranked,
    texts_of,
)

#: Loopback servers that misbehave, and seconds of waiting: outside the unit tier.
pytestmark = pytest.mark.slow

# -- 11: the answer's size is bounded, decoded --------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_answers_past_max_response_bytes_are_refused(mode: str) -> None:
    big = [b"x" * 65536] * 80  # 5 MiB, streamed with no Content-Length
    declared = (200, [(b"content-length", str(2**30).encode())], b"")
    replies: list[Reply] = [(200, [(b"content-type", b"application/json")], big), declared]

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return replies.pop(0)

    with asgi(handler) as server:
        reranker = VLLMReranker(
            base_url=server.url, max_response_bytes=2**20, retry=RetryPolicy(max_retries=0)
        )
        with pytest.raises(InvalidResponseError, match="max_response_bytes"):
            await call(reranker, mode)
        with pytest.raises(InvalidResponseError, match="declares"):  # refused before reading
            await call(reranker, mode)
        await reranker.aclose()


@pytest.mark.parametrize("mode", MODES)
async def test_a_gzip_bomb_stops_at_the_cap(mode: str) -> None:
    bomb = gzip.compress(b'{"results": [' + b" " * (200 * 2**20) + b"]}", compresslevel=9)
    assert len(bomb) < 400_000

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        head = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        return 200, head, bomb

    process = psutil.Process()
    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url)
        gc.collect()
        rss = process.memory_info().rss
        with pytest.raises(InvalidResponseError, match="max_response_bytes"):
            await call(reranker, mode)
        grown = (process.memory_info().rss - rss) / 2**20
        await reranker.aclose()
    assert grown < 200  # 200 MiB decoded would be there, and far more for a bigger bomb


# -- 13: proxy variables httpx cannot use ---------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ALL_PROXY", "socks5://user:hunter2-pw@127.0.0.1:1080"),
        ("HTTP_PROXY", "ftp://user:hunter2-pw@127.0.0.1:21"),
        ("https_proxy", "gopher://hunter2-pw@127.0.0.1"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
async def test_unusable_proxy_variables_are_named_not_shown(
    var: str, value: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if var == "ALL_PROXY":
        try:
            import socksio  # noqa: F401
        except ImportError:
            pass
        else:  # pragma: no cover - with socksio a SOCKS proxy is fine
            pytest.skip("socksio is installed")
    monkeypatch.setenv(var, value)
    reranker = VLLMReranker(base_url="http://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match=var) as info:
        await call(reranker, mode)
    assert "hunter2" not in str(info.value)


PROXY_PASSWORD = "proxyPassw0rd-4711"


@pytest.mark.parametrize("mode", MODES)
async def test_a_proxy_echoing_its_credentials_has_them_scrubbed(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Attack F8: a proxy's 407 echoing Proxy-Authorization put base64(user:password) in the
    # error; the proxy variables' credentials are now scrubbed as the key is.
    hits: list[bytes] = []

    def refuse(conn: socket.socket) -> None:
        hits.append(b"")
        echo = base64.b64encode(f"bob:{PROXY_PASSWORD}".encode())
        body = b'{"message": "denied for Proxy-Authorization: Basic ' + echo + b'"}'
        conn.sendall(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    with RawServer(refuse) as proxy:
        for var in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("//", f"//bob:{PROXY_PASSWORD}@"))
        reranker = VLLMReranker(base_url="http://10.254.0.9:8000", retry=RetryPolicy(max_retries=0))
        with pytest.raises(ProviderError, match="HTTP 407") as info:
            await call(reranker, mode)  # reaches 10.254.0.9 only through the loopback proxy
        await reranker.aclose()
    assert hits
    for text in texts_of(info.value):
        assert pieces_of(PROXY_PASSWORD, text) == [], text


# -- F6: decompression bombs are stopped while decoding -------------------------------------


def gzip_bomb(decoded: int, layers: int = 1) -> bytes:
    """``decoded`` zero bytes gzipped ``layers`` times, made in bounded memory."""
    import zlib

    data = b""
    for layer in range(layers):
        packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        if layer == 0:
            block = b"\0" * 2**20
            parts = [packer.compress(block) for _ in range(decoded // 2**20)]
        else:
            parts = [packer.compress(data)]
        data = b"".join([*parts, packer.flush()])
    return data


def zstd_bomb(decoded: int) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    packer = zstandard.ZstdCompressor(level=19).compressobj()
    block = b"\0" * 2**20
    return b"".join([*(packer.compress(block) for _ in range(decoded // 2**20)), packer.flush()])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("encoding", ["zstd", "gzip, gzip"])
async def test_zstd_and_stacked_gzip_bombs_are_refused_in_bounded_memory(
    encoding: str, mode: str
) -> None:
    bomb = zstd_bomb(2**30) if encoding == "zstd" else gzip_bomb(2**30, layers=2)
    assert len(bomb) < 100_000  # 1 GiB decoded
    accepted: list[str] = []

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        accepted.append(headers.get("accept-encoding", ""))
        head = [(b"content-type", b"application/json"), (b"content-encoding", encoding.encode())]
        return 200, head, bomb

    process = psutil.Process()
    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, retry=RetryPolicy(deadline=5))
        gc.collect()
        rss = process.memory_info().rss
        started = time.monotonic()
        with pytest.raises(InvalidResponseError, match="Content-Encoding"):
            await call(reranker, mode)
        took = time.monotonic() - started
        grown = (process.memory_info().rss - rss) / 2**20
        await reranker.aclose()
    print(f"\n{encoding} bomb ({len(bomb):,} B, 1 GiB decoded): RSS {grown:+.0f} MiB, {took:.2f}s")
    assert accepted == ["gzip, deflate"]
    assert grown < 100  # before: +2,054 MiB (gzip, gzip) and +2,061 MiB (zstd)
    assert took < 1.0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw deflate", "identity, gzip"])
async def test_compressed_answers_are_decoded(encoding: str, mode: str) -> None:
    import zlib

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        plain = json.dumps(ranked(body)).encode()
        wbits = {"deflate": zlib.MAX_WBITS, "raw deflate": -zlib.MAX_WBITS}.get(
            encoding, zlib.MAX_WBITS | 16
        )
        packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
        packed = packer.compress(plain) + packer.flush()
        name = "deflate" if "deflate" in encoding else encoding
        head = [(b"content-type", b"application/json"), (b"content-encoding", name.encode())]
        return 200, head, [packed[:7], packed[7:]]  # split mid-stream

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url)
        results = await call(reranker, mode)
        await reranker.aclose()
    assert [r.index for r in results] == order(DOCS)


# -- F30: the answer's size bounds what parsing it costs, off the shared loop ----------------


def empty_lists(size: int) -> bytes:
    count = (size - 20) // 3
    return b'{"results":[' + b"[]," * (count - 1) + b"[]]}"


@pytest.mark.parametrize("mode", MODES)
async def test_an_answer_of_millions_of_tiny_values_is_refused_before_parsing(mode: str) -> None:
    hostile = empty_lists(4 * 2**20 - 4096)  # under the 4 MiB default cap

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return 200, [(b"content-type", b"application/json")], hostile

    process = psutil.Process()
    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, max_batch=1, retry=FAST)
        gc.collect()
        rss = process.memory_info().rss
        started = time.monotonic()
        with pytest.raises(InvalidResponseError, match="JSON values for 1 documents"):
            await call(reranker, mode, ["a", "b", "c", "d"])  # 4 chunks at once
        took = time.monotonic() - started
        grown = (process.memory_info().rss - rss) / 2**20
        await reranker.aclose()
    print(f"\n4 x 4 MiB of '[],': RSS {grown:+.0f} MiB, {took:.2f}s")
    assert grown < 150  # before: 32 MiB answers, +880 MiB each; 4 MiB would parse to +110
    assert took < 2.0


@pytest.mark.parametrize("mode", MODES)
async def test_an_answer_echoing_long_documents_fits_past_the_default_cap(mode: str) -> None:
    docs = [f"document {i} " + "x" * 3000 for i in range(2000)]  # 6 MB sent, 6 MB echoed

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        results = [
            {"index": i, "relevance_score": 1 / (1 + i), "document": {"text": d}}
            for i, d in enumerate(body["documents"])
        ]
        return as_json({"results": results})

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url)
        results = await call(reranker, mode, docs)
        await reranker.aclose()
    assert [r.index for r in results] == list(range(2000))


def test_a_hostile_answer_does_not_stall_another_rerankers_sync_calls() -> None:
    hostile = empty_lists(4 * 2**20 - 4096)

    async def bad(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return 200, [(b"content-type", b"application/json")], hostile

    with asgi(bad) as bad_server, asgi(ok_handler()) as good_server:
        attacked = VLLMReranker(base_url=bad_server.url, retry=RetryPolicy(max_retries=0))
        healthy = VLLMReranker(base_url=good_server.url, retry=RetryPolicy(deadline=1.0))
        healthy.rerank(QUERY, DOCS)
        stop = threading.Event()

        def attack() -> None:
            while not stop.is_set():
                with contextlib.suppress(ProviderError):
                    attacked.rerank(QUERY, DOCS)

        attacker = threading.Thread(target=attack)
        attacker.start()
        times = []
        try:
            for _ in range(20):
                started = time.monotonic()
                healthy.rerank(QUERY, DOCS)
                times.append(time.monotonic() - started)
                time.sleep(0.02)
        finally:
            stop.set()
            attacker.join(30)
        attacked.close()
        healthy.close()
    print(f"\nhealthy sync calls beside a hostile one: max {max(times):.2f}s")
    assert max(times) < 1.0  # before: 7.7 s at deadline=1 (32 MiB answers)


# -- F7, F20: the retry policy's arithmetic ---------------------------------------------------


def test_backoff_does_not_overflow_for_huge_retry_counts() -> None:
    policy = RetryPolicy(max_retries=5000, backoff_base=0.01, backoff_max=0.05, deadline=300)
    assert policy.backoff(1024, rand=lambda: 0.0) == 0.05
    assert policy.backoff(10**9, rand=lambda: 0.0) == 0.05
    zero = RetryPolicy(max_retries=10**6, backoff_base=0, backoff_max=0, deadline=2)
    assert zero.backoff(10**6) == 0.0


@pytest.mark.parametrize("retry_after", ["0", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"])
async def test_a_zero_negative_or_past_retry_after_still_backs_off(retry_after: str) -> None:
    seen: list[float] = []

    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        seen.append(time.monotonic())
        return as_json({"message": "busy"}, 503, retry_after=retry_after)

    policy = RetryPolicy(max_retries=2, backoff_base=0.2, backoff_max=0.2, jitter=0.5)
    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, retry=policy)
        with pytest.raises(ProviderUnavailableError):
            await reranker.arerank(QUERY, DOCS)
        await reranker.aclose()
    gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    assert len(gaps) == 2 and min(gaps) >= 0.09  # before: 3 requests within 0.01 s


# -- F8, F9, F10, F11: options that reached the wire unchecked -------------------------------


@pytest.mark.parametrize("port", ["0", "65536", "99999", "123456789012345678901"])
def test_a_port_out_of_range_is_refused_at_construction(port: str) -> None:
    with pytest.raises(ConfigurationError, match="port must be from 1 to 65535"):
        CohereReranker(api_key=KEY, base_url=f"http://127.0.0.1:{port}")


@pytest.mark.parametrize("version", ["2025-10\r\nX-Injected: 1", "2025\u201110", "", 2025])
def test_pinecone_api_version_must_fit_in_a_header(version: object) -> None:
    with pytest.raises(ConfigurationError, match="api_version"):
        PineconeReranker(api_key=KEY, api_version=version)  # type: ignore[arg-type]


async def test_headers_merge_case_insensitively_and_never_carry_two_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError, match="'authorization'") as info:
        CohereReranker(api_key=KEY, headers={"authorization": "Bearer OTHER-KEY-123"})
    assert KEY not in str(info.value) and "OTHER" not in str(info.value)
    with pytest.raises(ConfigurationError, match="twice"):
        VLLMReranker(base_url="http://127.0.0.1:9", headers={"X-A": "1", "x-a": "2"})
    with pytest.raises(ConfigurationError, match="(?i)accept-encoding"):
        VLLMReranker(base_url="http://127.0.0.1:9", headers={"accept-encoding": "br"})
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(list(scope["headers"]))
        while (await receive()).get("more_body"):
            pass
        body = json.dumps({"results": [{"index": 0, "relevance_score": 0.5}]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    server = BackgroundServer(app)
    server.start()
    try:
        monkeypatch.setenv("COHERE_API_KEY", KEY)
        own = CohereReranker(headers={"authorization": "Bearer caller-token-1"})
        assert own.api_key is None  # the caller's header wins; the variable is not read
        reranker = VLLMReranker(
            base_url=server.url,
            api_key=KEY,
            headers={"content-type": "application/json", "user-agent": "mine/1"},
        )
        await reranker.arerank(QUERY, ["d"])
        await reranker.aclose()
    finally:
        server.stop()
    names = [name.lower() for name, _ in seen[0]]
    assert len(names) == len(set(names))  # before: both Authorization headers went out
    assert (b"user-agent", b"mine/1") in seen[0]


def test_option_types_are_checked_before_anything_is_sent() -> None:
    for option in ({"raw_scores": "false"}, {"truncate": "no"}, {"raw_scores": 1}):
        with pytest.raises(ConfigurationError, match=next(iter(option))):
            TEIReranker(base_url="http://127.0.0.1:9", **option)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="truncation"):
        VoyageReranker(api_key=KEY, truncation="no")  # type: ignore[arg-type]
    for model in ("a/b?api_key=x#f", "a/b#frag", "a/%2e%2e/b", "a b"):
        with pytest.raises(ConfigurationError, match="model_name"):
            NVIDIAReranker(model, api_key=KEY)
    assert NVIDIAReranker("nv-rerank-qa-mistral-4b:1", api_key=KEY).url.endswith("/reranking")


# -- F21: duplicate keys make an answer mean two things ------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"results": [{"index": 7}], "results": [{"index": 0, "relevance_score": 0.5}]}',
        b'{"results": [{"index": 0, "relevance_score": "x", "relevance_score": 0.5}]}',
        b'{"results": [{"index": 5, "index": 0, "relevance_score": 0.5}]}',
    ],
)
@pytest.mark.parametrize("mode", MODES)
async def test_an_answer_with_a_duplicate_key_is_invalid(body: bytes, mode: str) -> None:
    async def handler(request: dict[str, Any], headers: dict[str, str]) -> Reply:
        return 200, [(b"content-type", b"application/json")], body

    with asgi(handler) as server:
        reranker = VLLMReranker(base_url=server.url, retry=FAST)
        with pytest.raises(InvalidResponseError, match="twice"):
            await call(reranker, mode, ["d"])
        await reranker.aclose()
