"""uvicorn's h11 protocol with the connection guards ``serve`` adds (uvicorn has none of them).

A header timeout (slow headers are cut, answered 408 if part of a request came), a cap on
open connections (past it the longest wait for headers is closed, else a 503), and a cap on
the pieces a body comes in (1-byte chunks answered 400). Imports uvicorn and h11.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from milvus_rerank.app.serve.formats import VLLM
from milvus_rerank.app.serve.limits import BYTES_PER_BODY_PIECE, FREE_BODY_PIECES, MAX_HEADER_BYTES

__all__ = ["REFUSALS_LINGERING", "CountingConnection", "GuardedH11Protocol", "guarded_protocol"]

#: Connections refused with 503 that may linger (reading the request) before closing.
REFUSALS_LINGERING = 64


def raw_answer(status: int, reason: str, message: str, headers: str = "") -> bytes:
    """A whole ``Connection: close`` answer in vLLM's error shape, for the protocol's refusals."""
    body = json.dumps(VLLM.error(status, message)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{headers}connection: close\r\n\r\n"
    )
    return head.encode() + body


class CountingConnection(h11.Connection):
    """h11's connection, telling its protocol of each request and counting body pieces."""

    def __init__(self, size: int, on_request: Callable[[], None]) -> None:
        super().__init__(h11.SERVER, size)
        self.on_request = on_request
        self.pieces = 0
        self.received = 0
        self.refusal: str | None = None

    def next_event(self) -> Any:
        """h11's next event; a body in too many pieces for its size is a protocol error."""
        event = super().next_event()
        if isinstance(event, h11.Request):
            self.pieces = self.received = 0
            self.on_request()
        elif isinstance(event, h11.Data):
            self.pieces += 1
            self.received += len(event.data)
            if self.pieces > FREE_BODY_PIECES + self.received // BYTES_PER_BODY_PIECE:
                # uvicorn answers a RemoteProtocolError through send_400_response.
                self.refusal = (
                    f"the request body came in {self.pieces} pieces for its first "
                    f"{self.received} bytes; at most {FREE_BODY_PIECES} pieces plus one "
                    f"per {BYTES_PER_BODY_PIECE} bytes (send larger chunks, or a "
                    "Content-Length)"
                )
                raise h11.RemoteProtocolError(self.refusal)
        return event


class GuardedH11Protocol(H11Protocol):
    """One connection, guarded (see the module docstring); ``guarded_protocol`` sets the bounds."""

    #: Seconds a connection may take to send its request headers.
    header_timeout: float = 10.0
    #: Connections kept open at most.
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size or MAX_HEADER_BYTES
        self.conn: CountingConnection = CountingConnection(size, self._headers_in)
        self.waiting_since: float | None = None  # waiting for request headers since then
        self._header_timer: asyncio.TimerHandle | None = None
        self.refusing = False  # answered 503 at once; the request is read and dropped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Take the connection under the cap, else answer 503 and close it shortly."""
        super().connection_made(transport)
        if self._make_room():
            self._await_headers()
            return
        self.refusing = True
        most = self.max_connections
        self.transport.write(
            raw_answer(
                503,
                "Service Unavailable",
                f"{most} connections are inside requests (at most {most}); retry later",
                "retry-after: 1\r\n",
            )
        )
        # Closing with the request unread would reset the connection, and the client
        # might never read the answer: read and drop the request for a moment first.
        lingering = sum(1 for c in self.connections if getattr(c, "refusing", False))
        if lingering > REFUSALS_LINGERING or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(1.0, self.transport.close)

    def _make_room(self) -> bool:
        """Under the cap, or back under it by closing the longest wait for headers."""
        if len(self.connections) <= self.max_connections:
            return True
        live = [
            c
            for c in self.connections
            if not c.transport.is_closing() and not getattr(c, "refusing", False)
        ]
        if len(live) <= self.max_connections:
            return True
        waiting = [
            c
            for c in live
            if isinstance(c, GuardedH11Protocol) and c is not self and c.waiting_since is not None
        ]
        if not waiting:
            return False
        min(waiting, key=lambda c: c.waiting_since or 0.0).drop()
        return True

    def drop(self) -> None:
        """Close this connection, which holds no request."""
        self._stop_waiting()
        self.transport.close()

    def _await_headers(self) -> None:
        self._stop_waiting()
        self.waiting_since = self.loop.time()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_waiting(self) -> None:
        self.waiting_since = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_in(self) -> None:
        self._stop_waiting()

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.waiting_since is None or self.transport.is_closing():
            return
        self.waiting_since = None
        if self.conn.trailing_data[0]:  # part of a request came: say why it ends
            message = f"the request headers did not arrive within {self.header_timeout:g} s"
            self.transport.write(raw_answer(408, "Request Timeout", message))
        self.transport.close()

    def on_response_complete(self) -> None:
        """Wait for the next request's headers (before a pipelined one is taken up)."""
        if not self.transport.is_closing():
            self._await_headers()
        super().on_response_complete()

    def data_received(self, data: bytes) -> None:
        """Read the connection, unless it is being refused."""
        if not self.refusing:
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """The 400 of uvicorn, or the body-pieces refusal in vLLM's shape."""
        refusal = self.conn.refusal
        if refusal is None:
            super().send_400_response(msg)
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(raw_answer(400, "Bad Request", refusal))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the header timer, then uvicorn's own clean-up."""
        self._stop_waiting()
        super().connection_lost(exc)


def guarded_protocol(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """``GuardedH11Protocol`` with these bounds (uvicorn takes a protocol class)."""
    bounds = {"header_timeout": header_timeout, "max_connections": max_connections}
    return cast(
        "type[GuardedH11Protocol]", type("GuardedH11Protocol", (GuardedH11Protocol,), bounds)
    )
