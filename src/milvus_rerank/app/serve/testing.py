"""A public testing utility: ``BackgroundServer`` runs a ``serve`` app in a background thread.

For tests and benchmarks, never for serving: it listens on 127.0.0.1 (an ephemeral port by
default) with the same connection guards as ``run_server``, and stops when its block ends.
A ``BackgroundServer`` serves once: start it once, stop it (any number of times), then make
another for more.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from milvus_rerank.app.serve.connections import uvicorn_options
from milvus_rerank.app.serve.limits import ServeLimits
from milvus_rerank.app.serve.listen import bind_sockets, http_url
from milvus_rerank.core.errors import ConfigurationError, MissingDependencyError

__all__ = ["BackgroundServer"]

ASGIApp = Callable[..., Any]

_DEFAULTS = ServeLimits()


class BackgroundServer:
    """Run an ASGI app under uvicorn on 127.0.0.1 in a background thread (tests, benchmarks).

    The connections are guarded as ``run_server``'s are (header timeout, connection cap,
    body pieces; docs/serve.md). Single-use: ``start`` once; ``stop`` before ``start`` or
    twice does nothing.

    Example:
        >>> with BackgroundServer(create_app(reranker)) as server:  # doctest: +SKIP
        ...     httpx.post(server.url + "/v2/rerank", json=...)
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        header_timeout: float = _DEFAULTS.header_timeout,
        max_connections: int = _DEFAULTS.max_connections,
    ) -> None:
        try:
            import uvicorn
        except ImportError as exc:
            raise MissingDependencyError("The rerank server", "serve", "uvicorn") from exc
        options = uvicorn_options(
            header_timeout=header_timeout, max_connections=max_connections, lifespan="off"
        )
        config = uvicorn.Config(app, host=host, port=port, access_log=False, **options)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """``http://host:port`` of the server (an IPv6 host in brackets).

        Raises:
            RuntimeError: port 0 (any free one) before ``start``, when it is not known yet.
        """
        if self.port == 0:
            raise RuntimeError(
                "the background server has no port yet: start() it first (or use it as a "
                "context manager)"
            )
        return http_url(self.host, self.port)

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._server.server_state.connections)

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start serving; returns once the socket is listening.

        Raises:
            RuntimeError: already started (a ``BackgroundServer`` serves once), the address
                cannot be listened on (the message says why), or the server did not start
                within ``timeout`` seconds.
        """
        if self._thread is not None:
            raise RuntimeError(
                "this BackgroundServer was already started; it is single-use: make a new one"
            )
        try:
            sockets = bind_sockets(self.host, self.port)
        except ConfigurationError as exc:
            raise RuntimeError(f"the background server did not start: {exc}") from None
        self.port = sockets[0].getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, args=(sockets,), name="uvicorn", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            alive = self._thread.is_alive()
            if not alive or time.monotonic() > deadline:
                self.stop()
                why = "stopped while starting" if not alive else f"did not start in {timeout:g} s"
                raise RuntimeError(f"the background server {why} (see the uvicorn.error log)")
            time.sleep(0.01)
        return self

    def _run(self, sockets: list[socket.socket]) -> None:
        try:
            self._server.run(sockets=sockets)
        finally:
            for sock in sockets:
                sock.close()

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread; a no-op if not running."""
        if self._thread is None or self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
