"""uvicorn's h11 protocol with the connection guards ``serve`` adds (uvicorn has none of them).

A header timeout (slow headers are cut, answered 408 if part of a request came), a bound on
the headers' bytes however they arrive (431), a cap on open connections (past it the longest
wait for headers is closed, else a 503; ``GET /health`` still answered), and a cap on the
pieces a body comes in (1-byte chunks answered 400). These answers come before routing: in
vLLM's error shape on every route. Imports uvicorn and h11.
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

__all__ = [
    "LINGER_SECONDS",
    "REFUSALS_LINGERING",
    "REQUEST_LINE_BYTES",
    "CountingConnection",
    "GuardedH11Protocol",
    "guarded_protocol",
    "head_bytes",
    "is_health_check",
]

#: Connections refused with 503 that may linger (reading the request) before closing.
REFUSALS_LINGERING = 64
#: Seconds a refused connection lingers; bytes of its request read to see if it is for
#: ``GET /health`` (answered past the cap).
LINGER_SECONDS = 1.0
REQUEST_LINE_BYTES = 1024


def raw_answer(status: int, reason: str, message: str, headers: str = "") -> bytes:
    """A whole ``Connection: close`` answer in vLLM's error shape, for the protocol's refusals."""
    body = json.dumps(VLLM.error(status, message)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{headers}connection: close\r\n\r\n"
    )
    return head.encode() + body


def head_bytes(request: h11.Request) -> int:
    """The bytes of a request's line and headers, as sent (line ends included)."""
    line = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n")
    fields = sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items())
    return line + fields + 2


def is_health_check(head: bytes) -> bool:
    """Whether a request's first line is ``GET /health`` (with or without a query)."""
    method, _, rest = head.partition(b" ")
    target = rest.partition(b" ")[0]
    return method == b"GET" and target.partition(b"?")[0] == b"/health"


class CountingConnection(h11.Connection):
    """h11's connection: tells its protocol of each request, bounds headers and body pieces."""

    def __init__(self, size: int, on_request: Callable[[], None]) -> None:
        super().__init__(h11.SERVER, size)
        self.max_head = size
        self.on_request = on_request
        self.pieces = 0
        self.received = 0
        #: Why the request is refused (status, reason, message), for ``send_400_response``.
        self.refusal: tuple[int, str, str] | None = None

    def _refuse(self, status: int, reason: str, message: str) -> h11.RemoteProtocolError:
        # uvicorn answers a RemoteProtocolError through send_400_response.
        self.refusal = (status, reason, message)
        return h11.RemoteProtocolError(message, error_status_hint=status)

    def _headers_too_large(self, size: int | None) -> h11.RemoteProtocolError:
        what = f"{size} bytes" if size is not None else f"over {self.max_head} bytes"
        return self._refuse(
            431,
            "Request Header Fields Too Large",
            f"the request line and headers hold {what}; at most {self.max_head}",
        )

    def next_event(self) -> Any:
        """h11's next event; headers too large or a body in too many pieces are refused."""
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431 and self.refusal is None:  # headers in pieces
                raise self._headers_too_large(None) from None
            raise
        if isinstance(event, h11.Request):
            self.pieces = self.received = 0
            self.on_request()
            size = head_bytes(event)  # headers that came whole, in one read
            if size > self.max_head:
                raise self._headers_too_large(size)
        elif isinstance(event, h11.Data):
            self.pieces += 1
            self.received += len(event.data)
            if self.pieces > FREE_BODY_PIECES + self.received // BYTES_PER_BODY_PIECE:
                raise self._refuse(
                    400,
                    "Bad Request",
                    f"the request body came in {self.pieces} pieces for its first "
                    f"{self.received} bytes; at most {FREE_BODY_PIECES} pieces plus one "
                    f"per {BYTES_PER_BODY_PIECE} bytes (send larger chunks, or a "
                    "Content-Length)",
                )
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
        self.refusing = False  # past the cap: refused (503) unless it asks for /health
        #: A refused connection's request until its first line (None: decided).
        self._first_bytes: bytes | None = b""
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Take the connection under the cap, else refuse it (503) unless it is a health check.

        Its request line is awaited for a moment (``LINGER_SECONDS``): ``GET /health`` is
        answered all the same, so a server full of slow uploads still reports its health;
        anything else is answered 503 and dropped.
        """
        super().connection_made(transport)
        if self._make_room():
            self._await_headers()
            return
        self.refusing = True
        # Closing with the request unread would reset the connection, and the client
        # might never read the answer: read and drop the request for a moment first.
        lingering = sum(1 for c in self.connections if getattr(c, "refusing", False))
        if lingering > REFUSALS_LINGERING or not self.transport.can_write_eof():
            self._answer_503()
            self.transport.close()
            return
        self._linger = self.loop.call_later(LINGER_SECONDS, self._linger_over)

    def _answer_503(self) -> None:
        most = self.max_connections
        self.transport.write(
            raw_answer(
                503,
                "Service Unavailable",
                f"{most} connections are inside requests (at most {most}); retry later",
                "retry-after: 1\r\n",
            )
        )

    def _linger_over(self) -> None:
        self._linger = None
        if self._first_bytes is not None:  # no request line came: answered all the same
            self._answer_503()
        self.transport.close()

    def _refused_data(self, data: bytes) -> None:
        """A refused connection's bytes: its first line decides, the rest is dropped."""
        if self._first_bytes is None:
            return  # answered already: dropped
        head = self._first_bytes + data
        if b"\n" not in head and len(head) < REQUEST_LINE_BYTES:
            self._first_bytes = head
            return
        self._first_bytes = None
        if is_health_check(head.partition(b"\n")[0].rstrip(b"\r")):
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            self.refusing = False  # a health check is answered past the cap
            self._await_headers()
            super().data_received(head)
            return
        self._answer_503()
        self.transport.write_eof()

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
        """Read the connection (a refused one: only to see if it is a health check)."""
        if self.refusing:
            self._refused_data(data)
        else:
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """The 400 of uvicorn, or this protocol's refusal (431, 400) in vLLM's shape."""
        refusal = self.conn.refusal
        if refusal is None:
            super().send_400_response(msg)
            return
        cycle = self.cycle  # (a keep-alive connection's: the previous request's)
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(raw_answer(*refusal))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timers, then uvicorn's own clean-up."""
        self._stop_waiting()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)


def guarded_protocol(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """``GuardedH11Protocol`` with these bounds (uvicorn takes a protocol class)."""
    bounds = {"header_timeout": header_timeout, "max_connections": max_connections}
    return cast(
        "type[GuardedH11Protocol]", type("GuardedH11Protocol", (GuardedH11Protocol,), bounds)
    )
