"""The Milvus test client against Go itself: the same request bytes, the same decoding verdicts.

``go_reference/main.go`` posts and decodes with Go's ``net/http`` and ``encoding/json`` as
Milvus's vllm/tei clients do. A loopback socket records both clients' requests whole (request
line, headers, body) and they must be equal byte for byte; then both decode the same answers
and must agree on which fail and on the ``(index, score)`` pairs. Skipped where no Go
toolchain is installed (``apt-get install golang-go``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.serve.milvus_client import MilvusCallError, decode_answer, milvus_rerank_call

GO = shutil.which("go")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(GO is None, reason="no Go toolchain")]

SOURCE = Path(__file__).with_name("go_reference") / "main.go"
DOCS = [
    "plain",
    '<b>tag</b> & "quotes" \\ back',
    "line\u2028sep\u2029",
    "tab\tnl\n\x01ctl\x7f",
    "naïve 東京 🚀",
    "",
]
Request = tuple[bytes, dict[str, str], bytes]


@pytest.fixture(scope="module")
def go_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("go") / "reference"
    env = {"PATH": str(Path(str(GO)).parent), "HOME": str(out.parent)}
    env |= {"GOCACHE": str(out.parent / "cache"), "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
    subprocess.run([str(GO), "build", "-o", str(out), str(SOURCE)], check=True, env=env)
    return out


def _read_request(stream: Any) -> Request | None:
    line = stream.readline()
    if not line:
        return None
    headers = {}
    while (header := stream.readline()) not in (b"\r\n", b""):
        name, value = header.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    return line, headers, stream.read(int(headers.get("content-length", 0)))


def _answer(body: bytes) -> bytes:
    asked = json.loads(body)
    count = len(asked.get("documents", asked.get("texts", [])))
    if "texts" in asked:
        answer: object = [{"index": i, "score": 0.5} for i in range(count)]
    else:
        answer = {"results": [{"index": i, "relevance_score": 0.5} for i in range(count)]}
    return json.dumps(answer).encode()


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[Request]]]:
    """A loopback HTTP/1.1 server that keeps each request whole and answers every document."""
    seen: list[Request] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as stream:
                while (request := _read_request(stream)) is not None:
                    seen.append(request)
                    body = _answer(request[2])
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
                    conn.sendall(head.encode() + body)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        listener.close()


CASES: list[tuple[str, str, str | None, dict[str, Any]]] = [
    ("vllm", "q <&>", None, {}),
    ("vllm", "q", "k3y-abc", {"truncate_prompt_tokens": 512}),
    ("tei", "q\u2028", "k3y-abc", {"truncate": True, "truncation_direction": "Left"}),
    ("tei", "q", None, {"truncate": False}),
]


def test_requests_are_byte_for_byte_gos(go_binary: Path, recorder: Any, tmp_path: Path) -> None:
    url, seen = recorder
    cases = [
        {
            "url": f"{url}/rerank",
            "key": key or "",
            "body": {"query": query, ("documents" if p == "vllm" else "texts"): DOCS, **extra},
        }
        for p, query, key, extra in CASES
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    subprocess.run([str(go_binary), "send", str(tmp_path / "cases.json")], check=True)
    from_go = list(seen)
    seen.clear()
    for provider, query, key, extra in CASES:
        params = {"max_client_batch_size": "100", **{k: str(v) for k, v in extra.items()}}
        milvus_rerank_call(
            f"{url}/v1/ignored", provider, query, DOCS, credential=key, params=params
        )
    assert len(from_go) == len(seen) == len(CASES)
    assert seen == from_go


ANSWERS = [
    ("tei", '[{"index": 1, "score": 0.25}, {"index": 0, "score": 0.5}]'),
    ("tei", '[{"index": 0.0, "score": 1}]'),
    ("tei", '[{"index": 1e0, "score": 1}]'),
    ("tei", '[{"index": "0", "score": 1}]'),
    ("tei", '[{"index": true, "score": 1}]'),
    ("tei", '[{"index": 0, "score": "1"}]'),
    ("tei", '[{"index": 0, "score": NaN}]'),
    ("tei", '[{"index": 0, "score": 1e39}]'),
    ("tei", '{"index": 0, "score": 1}'),
    ("tei", "[1]"),
    ("tei", "null"),
    ("tei", '[null, {"index": 1}]'),
    ("tei", '[{"INDEX": 1, "Score": 0.1}, {"index": 0, "score": 0.1, "score": 0.2}]'),
    ("tei", '[{"index": 9223372036854775808, "score": 1}]'),
    ("tei", '[{"index": 0, "score": 1}] trailing'),
    ("vllm", '{"results": {}}'),
    ("vllm", '{"results": [], "id": 3}'),
    ("vllm", '{"results": [], "usage": {"total_tokens": 1.5}}'),
    ("vllm", '{"results": [], "usage": {"total_tokens": "5"}}'),
    ("vllm", '{"results": [], "usage": 7}'),
    ("vllm", "[]"),
    ("vllm", "null"),
    ("vllm", '{"Results": [{"INDEX": 0, "Relevance_Score": 0.1, "document": {"text": "d"}}]}'),
    ("vllm", '{"results": [{"index": 1, "relevance_score": 0.3}, {"index": 0}], "model": null}'),
]


def test_answers_decode_as_in_go(go_binary: Path, tmp_path: Path) -> None:
    (tmp_path / "answers.json").write_text(
        json.dumps([{"provider": p, "raw": raw} for p, raw in ANSWERS])
    )
    run = [str(go_binary), "decode", str(tmp_path / "answers.json")]
    verdicts = json.loads(subprocess.run(run, check=True, capture_output=True).stdout)
    for (provider, raw), go in zip(ANSWERS, verdicts, strict=True):
        try:
            mine: list[tuple[int, float]] | None = decode_answer(provider, raw.encode())
        except MilvusCallError:
            mine = None
        assert (mine is not None) == go["ok"], raw
        if mine is not None:  # float32 scores, widened to float64 on both sides
            assert mine == [(int(i), s) for i, s in go["pairs"] or []], raw
