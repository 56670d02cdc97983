"""A public testing utility: ``BackgroundServer`` runs a ``serve`` app in a background thread.

For tests and benchmarks, never for serving: it listens on 127.0.0.1 (an ephemeral port by
default) with the same connection guards as ``run_server``, and stops when its block ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from milvus_rerank.app.serve.connections import uvicorn_options
from milvus_rerank.app.serve.limits import ServeLimits
from milvus_rerank.core.errors import MissingDependencyError

__all__ = ["BackgroundServer"]

ASGIApp = Callable[..., Any]

_DEFAULTS = ServeLimits()


class BackgroundServer:
    """Run an ASGI app under uvicorn on 127.0.0.1 in a background thread (tests, benchmarks).

    The connections are guarded as ``run_server``'s are (header timeout, connection cap,
    body pieces; docs/serve.md).

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
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._server.server_state.connections)

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start serving; returns once the socket is listening."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
