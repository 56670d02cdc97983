"""The I/O of one attempt: a request sent and its answer's body read, sync or async.

The only place where the sync and async paths differ (``execution.Call`` holds every
decision). ``AsyncExchange`` awaits an ``httpx.AsyncClient``; ``ThreadedExchange`` runs an
injected ``httpx.Client`` in a worker thread (``rerank-N``) and, when the call stops waiting,
shuts that worker's sockets so a read blocked in it ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from milvus_rerank.providers.api.body import BodyReader

__all__ = ["AsyncExchange", "Exchange", "Outgoing", "ThreadedExchange"]

#: Builds the body reader for an answer whose headers came (its limits depend on both).
ReaderFor = Callable[[httpx.Response, httpx.Request], BodyReader]


@dataclass(frozen=True)
class Outgoing:
    """What one attempt sends, and how its answer's body is read.

    Its repr shows neither the headers (the key) nor the payload (the caller's documents): a
    traceback printed with its locals shows ``outgoing``.
    """

    url: str
    payload: dict[str, Any] = field(repr=False)
    headers: dict[str, str] = field(repr=False)
    timeout: float
    reader_for: ReaderFor


class Exchange(Protocol):
    """Sends one request and reads its answer's body: the I/O of one attempt."""

    @property
    def is_closed(self) -> bool:
        """Whether the client was closed (a call then ends with a typed error)."""
        ...

    async def send(self, outgoing: Outgoing) -> tuple[httpx.Response, bytes]:
        """The answer (closed, its body read) and its decoded body."""
        ...


class AsyncExchange:
    """Requests on an ``httpx.AsyncClient``, on the loop that awaits them."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @property
    def is_closed(self) -> bool:
        """Whether the client was closed."""
        return self.client.is_closed

    async def send(self, outgoing: Outgoing) -> tuple[httpx.Response, bytes]:
        """Post ``outgoing`` and read its answer's body within the reader's bounds."""
        request = self.client.build_request(
            "POST",
            outgoing.url,
            json=outgoing.payload,
            headers=outgoing.headers,
            timeout=outgoing.timeout,
        )
        response = await self.client.send(request, stream=True, follow_redirects=False)
        try:
            reader = outgoing.reader_for(response, request)
            if response.is_stream_consumed:  # in memory already (a mock transport), decoded
                reader.add(response.content)
            else:
                async for raw in response.aiter_raw():
                    if reader.feed(raw):
                        break
        finally:
            await response.aclose()
        return response, reader.content()


class ThreadedExchange:
    """Requests on an ``httpx.Client``, each in a worker thread the awaiting call can abandon.

    Args:
        client: The injected client (never closed here).
        context: The caller's context, which each worker runs in a copy of (so the client's
            event hooks and instrumentation see the caller's context variables).
    """

    def __init__(self, client: httpx.Client, context: contextvars.Context | None = None) -> None:
        self.client = client
        self.context = context

    @property
    def is_closed(self) -> bool:
        """Whether the client was closed."""
        return self.client.is_closed

    async def send(self, outgoing: Outgoing) -> tuple[httpx.Response, bytes]:
        """Post ``outgoing`` in a worker; stop waiting (and shut its sockets) when cancelled."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[httpx.Response, bytes]] = loop.create_future()
        sockets = _Sockets()

        def work() -> None:
            outcome: tuple[httpx.Response, bytes] | BaseException
            try:
                outcome = self._post(outgoing, sockets)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                outcome = exc
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, outcome)

        context = self.context.copy() if self.context is not None else contextvars.copy_context()
        name = f"rerank-{next(_workers)}"
        threading.Thread(target=context.run, args=(work,), name=name, daemon=True).start()
        try:
            return await future
        finally:
            if not future.done() or future.cancelled():
                sockets.abandon()

    def _post(self, outgoing: Outgoing, sockets: _Sockets) -> tuple[httpx.Response, bytes]:
        """The blocking request, run by the worker; it stops reading once abandoned."""
        request = self.client.build_request(
            "POST",
            outgoing.url,
            json=outgoing.payload,
            headers=outgoing.headers,
            timeout=outgoing.timeout,
            extensions={"trace": sockets.trace},
        )
        try:
            response = self.client.send(request, stream=True, follow_redirects=False)
        except BaseException:
            sockets.forget()  # its connection is closed, or back in the pool
            raise
        try:
            sockets.watch(response.extensions.get("network_stream"))
            reader = outgoing.reader_for(response, request)
            if response.is_stream_consumed:  # in memory already (a mock transport), decoded
                reader.add(response.content)
            for raw in () if response.is_stream_consumed else response.iter_raw():
                if sockets.abandoned or reader.feed(raw):
                    break
        finally:
            sockets.forget()  # before the connection goes back to the client's pool
            response.close()
        return response, reader.content()


_workers = itertools.count(1)


def _settle(
    future: asyncio.Future[tuple[httpx.Response, bytes]],
    outcome: tuple[httpx.Response, bytes] | BaseException,
) -> None:
    if future.done():  # the call stopped waiting
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class _Sockets:
    """The network streams one worker's request uses, shut if the request is abandoned.

    Found through httpx's documented extensions, without httpcore's internals: the ``trace``
    request extension reports the stream of a connection made for the request,
    ``network_stream`` that of a reused one once its headers came, and the stream's
    ``get_extra_info("socket")`` its socket. Closing a stream would not wake a read blocked in
    another thread (Linux); shutting its socket does. A transport without sockets
    (``MockTransport``) has nothing to shut: the call still ends at its deadline.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams: list[Any] = []
        self.abandoned = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """The ``trace`` request extension: keep the stream of each connection made."""
        if event.endswith(("connect_tcp.complete", "start_tls.complete")):
            self.watch(info.get("return_value"))

    def watch(self, stream: Any) -> None:
        """Keep ``stream`` to shut if abandoned (at once, if that already happened)."""
        if stream is None:
            return
        with self.lock:
            if not self.abandoned:
                self.streams.append(stream)
                return
        _shut(stream)

    def forget(self) -> None:
        """The request is done with its streams: they may serve another request now."""
        with self.lock:
            self.streams.clear()

    def abandon(self) -> None:
        """Shut every stream kept, and any the worker reports from now on."""
        with self.lock:
            self.abandoned = True
            streams, self.streams = self.streams, []
        for stream in streams:
            _shut(stream)


def _shut(stream: Any) -> None:
    """Shut a network stream's socket (a blocked ``recv`` in another thread returns)."""
    try:
        sock = stream.get_extra_info("socket")
    except Exception:  # noqa: BLE001 - a transport of unknown make: nothing to shut
        return
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, TLS or not
