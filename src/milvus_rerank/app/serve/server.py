"""``run_server``: the ``milvus-rerank serve`` server, uvicorn over the app, connections guarded.

The port is bound before uvicorn starts (a busy one is one ``ConfigurationError``), the
banner printed once the server listens. SIGTERM or Ctrl-C drains the app (``drain.py``), then
uvicorn shuts down; Ctrl-C ends with ``KeyboardInterrupt``, SIGTERM with the signal's own exit
status (docs/serve.md, "Starting and stopping").
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from milvus_rerank.app.serve.app import create_app
from milvus_rerank.app.serve.connections import connection_limits, uvicorn_options
from milvus_rerank.app.serve.drain import CUT_WAIT
from milvus_rerank.app.serve.limits import ServeLimits
from milvus_rerank.app.serve.listen import bind_sockets, http_url
from milvus_rerank.app.serve.state import ServeState
from milvus_rerank.core.base import Reranker
from milvus_rerank.core.checks import is_loopback
from milvus_rerank.core.errors import ConfigurationError, MissingDependencyError

__all__ = ["check_exposure", "run_server"]


def check_exposure(host: str, api_key: str | None, insecure_no_auth: bool) -> None:
    """Refuse a host reachable beyond this machine without a key or ``insecure_no_auth``.

    Raises:
        ConfigurationError: a non-loopback host, no key, no ``insecure_no_auth``.
    """
    if not is_loopback(host) and api_key is None and not insecure_no_auth:
        raise ConfigurationError(
            f"host {host!r} is reachable beyond this machine: set an API key (--api-key or "
            "MILVUS_RERANK_API_KEY) or pass --insecure-no-auth to serve it without one"
        )


def _serve(config: Any, sockets: list[socket.socket], banner: str, state: ServeState) -> None:
    """Run uvicorn over ``sockets``, writing ``banner`` to stderr once it listens.

    The first SIGTERM or Ctrl-C drains ``state``'s app (``Drain.finish``, over the
    ``graceful_timeout``) before uvicorn shuts down; a second cuts the requests left at once;
    a third is uvicorn's own (a Ctrl-C then stops at once). A Ctrl-C is raised again once
    uvicorn has shut down (``KeyboardInterrupt``, even where SIGINT was ignored when the
    process started), as is any other signal it caught (SIGTERM: the process ends with that
    signal's status).
    """
    import uvicorn

    drain, grace = state.drain, state.limits.graceful_timeout

    class Server(uvicorn.Server):
        interrupted = False
        hurry = threading.Event()
        drained: asyncio.Future[None] | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit and not drain.draining:
                sys.stderr.write(banner)
                sys.stderr.flush()

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            self.interrupted = self.interrupted or sig == signal.SIGINT
            if not drain.draining:  # the first: drain (uvicorn keeps the signal to raise)
                super().handle_exit(sig, frame)
                self.should_exit = False
                drain.start()
            elif not self.hurry.is_set():  # the second: cut what is left now
                self.hurry.set()
            else:
                super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if drain.draining and self.drained is None:
                self.drained = asyncio.ensure_future(drain.finish(grace, self.hurry))
            if self.drained is not None and self.drained.done():
                self.should_exit = True
            return await super().on_tick(counter)

    server = Server(config)
    server.run(sockets=sockets)
    if server.interrupted:  # a Ctrl-C that uvicorn's re-raise did not turn into one
        raise KeyboardInterrupt


def run_server(
    reranker: Reranker,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    insecure_no_auth: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    model_name: str | None = None,
    limits: ServeLimits | None = None,
    **overrides: Any,
) -> int:
    """``milvus-rerank serve``: serve ``reranker`` (already loaded) until interrupted.

    Args:
        reranker: The reranker to serve; requests are batched through its model's forward
            passes (a local reranker), its ``rerank_response`` or its own ``score_pairs``.
        host: Bind address; a non-loopback one needs ``api_key`` or ``insecure_no_auth``.
        port: TCP port.
        api_key: The bearer key every rerank request must carry (None: no key).
        insecure_no_auth: Allow a non-loopback host without a key.
        allowed_hosts: ``Host`` names answered besides localhost and IP addresses (``"*"``:
            any); None: checked only without a key, on a loopback host.
        model_name: The served model name (``create_app``'s).
        limits: The limits, connections' included (default: ``ServeLimits()``).
        **overrides: Fields of ``ServeLimits`` by name (``header_timeout=``,
            ``max_connections=``, ``max_wait_ms=``...), replacing those of ``limits``.

    Returns:
        0 once the server stopped (SIGTERM ends the process with its own status instead,
        once the app is drained: docs/serve.md, "Starting and stopping").

    Raises:
        ConfigurationError: a non-loopback host without a key or ``insecure_no_auth``, a bad
            limit or key, a port in use or an address that is not this machine's.
        KeyboardInterrupt: Ctrl-C, once the server has shut down.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("The rerank server", "serve", "uvicorn") from exc
    check_exposure(host, api_key, insecure_no_auth)
    if allowed_hosts is None and api_key is None and not is_loopback(host):
        allowed_hosts = ["*"]  # --insecure-no-auth: anyone may call it already
    limits = dataclasses.replace(limits or ServeLimits(), **overrides)
    app = create_app(
        reranker, model_name=model_name, api_key=api_key, allowed_hosts=allowed_hosts, limits=limits
    )
    # Lifespan off: the app has no startup work, and a Ctrl-C during uvicorn's lifespan
    # startup would log a traceback.
    settings = uvicorn_options(
        header_timeout=limits.header_timeout, max_connections=limits.max_connections, lifespan="off"
    )
    # Drained, every rank request is answered: uvicorn waits only for answers being sent.
    settings["timeout_graceful_shutdown"] = CUT_WAIT
    sockets = bind_sockets(host, port)
    try:
        port = sockets[0].getsockname()[1]
        auth = "Bearer key required" if api_key is not None else "no API key"
        cap, _ = connection_limits(limits.max_connections)
        banner = (
            f"milvus-rerank serve: {reranker!r} as {app.state.served_model_name!r} on "
            f"{http_url(host, port)} (POST /v2/rerank, /v1/rerank, /rerank; GET /health, "
            "/metrics; "
            f"{auth}; at most {cap} connections)\n"
        )
        config = uvicorn.Config(app, host=host, port=port, **settings)
        gc.collect()
        gc.freeze()  # the model's objects: collections during requests need not walk them
        _serve(config, sockets, banner, app.state.serve)
    finally:
        for sock in sockets:
            sock.close()
    return 0
