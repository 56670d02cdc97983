"""Loopback servers that misbehave on purpose, and the calls the hardening tests make through them.

Every server listens on 127.0.0.1: uvicorn (``BackgroundServer``) for answers an ASGI app can
give, a raw socket server for byte-level misbehaviour (trickled headers and bodies).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import json
import logging
import re
import socket
import threading
import time
import traceback
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from milvus_rerank import (
    RetryPolicy,
    VLLMReranker,
)
from milvus_rerank.app.serve.testing import BackgroundServer
from tests.fakes import fake_score, read_body

KEY = "sk-live-7Qz3" + "Xy9Lm2Np8Rt4Vw6" * 2
QUERY = "what is milvus"
DOCS = ["milvus is a vector database", "paris is in france", "milvus"]
FAST = RetryPolicy(backoff_base=0.001, backoff_max=0.01)


# -- servers ---------------------------------------------------------------------------------

Reply = tuple[int, list[tuple[bytes, bytes]], "bytes | list[bytes]"]
Handler = Callable[[dict[str, Any], dict[str, str]], Awaitable[Reply]]


def ranked(body: dict[str, Any]) -> dict[str, Any]:
    docs = body.get("documents", [])
    scores = [fake_score(body.get("query", ""), d) for d in docs]
    return {"results": [{"index": i, "relevance_score": s} for i, s in enumerate(scores)]}


def order(docs: list[str]) -> list[int]:
    return sorted(range(len(docs)), key=lambda i: (-fake_score(QUERY, docs[i]), i))


def as_json(payload: Any, status: int = 200, **headers: str) -> Reply:
    extra = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return status, [(b"content-type", b"application/json"), *extra], json.dumps(payload).encode()


@contextlib.contextmanager
def asgi(handler: Handler) -> Iterator[BackgroundServer]:
    """A uvicorn server whose every request is answered by ``handler(body, headers)``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        status, head, body = await handler(json.loads(raw or b"{}"), headers)
        await send({"type": "http.response.start", "status": status, "headers": head})
        parts = body if isinstance(body, list) else [body]
        for i, part in enumerate(parts):
            more = i < len(parts) - 1
            await send({"type": "http.response.body", "body": part, "more_body": more})

    server = BackgroundServer(app)
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # injected misbehaviour
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RawServer:
    """A raw TCP server on 127.0.0.1: ``serve(conn)`` runs per connection in a thread."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self._serve = serve
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                read_request(conn)
                self._serve(conn)
            except OSError:
                pass  # the client went away: what the test wanted

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 1 << 20:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return body


def trickle(data: bytes, every: float = 0.25, limit: int = 120) -> Callable[[socket.socket], None]:
    """Send ``data`` then a byte every ``every`` s (at most ``limit`` bytes, about 30 s)."""

    def serve(conn: socket.socket) -> None:
        conn.sendall(data)
        for _ in range(limit):
            time.sleep(every)
            conn.sendall(b" ")

    return serve


TRICKLED_HEADERS = b"HTTP/1.1 200 OK\r\nX-Slow:"
TRICKLED_BODY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 999\r\n\r\n{"


def key_parts_in(text: str) -> list[str]:
    """Every 8-character window of KEY found in ``text`` (a key cut in half still leaks)."""
    return [KEY[i : i + 8] for i in range(len(KEY) - 7) if KEY[i : i + 8] in text]


def texts_of(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))] + [
        str(getattr(exc, "request_id", None))
    ]


async def call(reranker: VLLMReranker, mode: str, docs: list[str] = DOCS) -> Any:
    if mode == "async":
        return await reranker.arerank(QUERY, docs)
    return await asyncio.to_thread(reranker.rerank, QUERY, docs)


MODES = ["sync", "async"]


def ok_handler(seen: list[str] | None = None, delay: float = 0.0) -> Handler:
    async def handler(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if seen is not None:
            seen.append(headers.get("authorization", ""))
        if delay:
            await asyncio.sleep(delay)
        return as_json(ranked(body))

    return handler


def pieces_of(key: str, text: str) -> list[str]:
    """Every 8-character window of ``key`` in ``text`` or a decoding of it, in any case."""
    low = "\n".join(decoded_views(text)).lower()
    return [key[i : i + 8] for i in range(len(key) - 7) if key[i : i + 8].lower() in low]


SLASHY = "sk-ab/cd+ef=gh0123456789LEAKxyz"  # a base64-style key: '/', '+', '='


def decoded_views(text: str) -> list[str]:
    """``text`` as given and as each encoding a server may echo a key in decodes it."""
    views = [text, urllib.parse.unquote(text), html.unescape(text)]
    views.append(re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text))
    for run in re.findall(r"[A-Za-z0-9+/=_-]{12,}", text):
        for skip in range(4):
            chunk = run[skip:]
            chunk = chunk[: len(chunk) // 4 * 4]
            with contextlib.suppress(ValueError):
                views.append(
                    base64.b64decode(chunk.replace("-", "+").replace("_", "/")).decode("latin-1")
                )
    for run in re.findall(r"[A-Za-z2-7]{16,}", text):
        for skip in range(8):
            chunk = run[skip:].upper()
            with contextlib.suppress(ValueError):
                views.append(base64.b32decode(chunk[: len(chunk) // 8 * 8]).decode("latin-1"))
    for run in re.findall(r"[0-9a-fA-F]{16,}", text):
        for skip in range(4):
            data = bytes.fromhex(run[skip:][: len(run[skip:]) // 4 * 4])
            views += [data.decode(codec, "replace") for codec in ("latin-1", "utf-16-le")]
            views.append(data.decode("utf-16-be", "replace"))
    return views


def raw_reply(status: int, body: bytes, *headers: tuple[bytes, bytes]) -> Reply:
    return status, [(b"content-type", b"text/plain"), *headers], body


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
