"""``run_server``: the ``milvus-rerank serve`` server, uvicorn over the app, connections guarded."""

from __future__ import annotations

import dataclasses
import gc
import sys
from collections.abc import Sequence
from typing import Any

from milvus_rerank.app.serve.app import create_app
from milvus_rerank.app.serve.connections import connection_limits, uvicorn_options
from milvus_rerank.app.serve.limits import ServeLimits
from milvus_rerank.core.base import Reranker
from milvus_rerank.core.checks import is_loopback
from milvus_rerank.core.errors import ConfigurationError, MissingDependencyError

__all__ = ["run_server"]


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

    Raises:
        ConfigurationError: a non-loopback host without a key or ``insecure_no_auth``, or a
            bad limit or key.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("The rerank server", "serve", "uvicorn") from exc
    if not is_loopback(host) and api_key is None and not insecure_no_auth:
        raise ConfigurationError(
            f"host {host!r} is reachable beyond this machine: set an API key (--api-key or "
            "MILVUS_RERANK_API_KEY) or pass --insecure-no-auth to serve it without one"
        )
    if allowed_hosts is None and api_key is None and not is_loopback(host):
        allowed_hosts = ["*"]  # --insecure-no-auth: anyone may call it already
    limits = dataclasses.replace(limits or ServeLimits(), **overrides)
    app = create_app(
        reranker, model_name=model_name, api_key=api_key, allowed_hosts=allowed_hosts, limits=limits
    )
    settings = uvicorn_options(
        header_timeout=limits.header_timeout, max_connections=limits.max_connections
    )
    auth = "Bearer key required" if api_key is not None else "no API key"
    cap, _ = connection_limits(limits.max_connections)
    sys.stderr.write(
        f"milvus-rerank serve: {reranker!r} as {app.state.served_model_name!r} on "
        f"http://{host}:{port} (POST /v2/rerank, /v1/rerank, /rerank; GET /health; {auth}; "
        f"at most {cap} connections)\n"
    )
    gc.collect()
    gc.freeze()  # the model's objects: collections during requests need not walk them
    uvicorn.run(app, host=host, port=port, **settings)
    return 0
