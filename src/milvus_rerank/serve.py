"""``milvus-rerank serve``: any local reranker over the Cohere v2, vLLM/Jina and TEI wire formats.

Routes (all ``POST``, JSON):

* ``/v2/rerank`` — Cohere v2 (``{"query", "documents", "top_n"?}`` → ``{"id", "results", "meta"}``);
  Milvus Lite's ``cohere`` provider posts here through ``base_url=http://host:port/v2``.
* ``/v1/rerank`` — vLLM / Jina (``results`` with ``document.text``, ``usage``).
* ``/rerank`` — a body with ``texts`` gets TEI's bare array; a body with ``documents`` gets
  vLLM's answer. Milvus 2.6's ``tei`` and ``vllm`` providers both post to ``{endpoint}/rerank``.
* ``GET /health`` — ``{"status": "ok"}``.

Concurrent requests are batched together for the model: a micro-batcher collects requests for
``max_wait_ms`` (or until ``max_batch_pairs`` pairs are waiting) and scores them in one pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import MissingDependencyError

__all__ = ["BackgroundServer"]

ASGIApp = Callable[..., Any]


class BackgroundServer:
    """Run an ASGI app under uvicorn on 127.0.0.1 in a background thread (tests, benchmarks).

    Example:
        >>> with BackgroundServer(app) as server:  # doctest: +SKIP
        ...     httpx.post(server.url + "/v2/rerank", json=...)
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            import uvicorn
        except ImportError as exc:
            raise MissingDependencyError("The rerank server", "serve", "uvicorn") from exc
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

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
