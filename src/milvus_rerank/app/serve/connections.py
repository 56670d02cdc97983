"""The connection settings ``serve`` gives uvicorn (``uvicorn_options``).

The guarded protocol, a connection cap under the open-file limit, and an accept backlog that
one burst of accepts cannot run the process out of descriptors with.
"""

from __future__ import annotations

from typing import Any

from milvus_rerank.app.serve.limits import MAX_HEADER_BYTES, ServeLimits
from milvus_rerank.core.checks import positive_number

__all__ = ["SPARE_FDS", "connection_limits", "open_file_limit", "uvicorn_options"]

#: Descriptors left spare beside the accept backlog.
SPARE_FDS = 64

_DEFAULTS = ServeLimits()


def open_file_limit() -> int | None:
    """The soft limit on open files, or None where it is unknown or unlimited."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def connection_limits(max_connections: int = _DEFAULTS.max_connections) -> tuple[int, int]:
    """(connections kept open at most, accept backlog) under this process's open-file limit.

    One wake-up of the listening socket accepts up to ``backlog`` connections before any of
    them is looked at, so the cap leaves that many descriptors, and 64 more, spare.
    """
    files = open_file_limit()
    if files is None:
        return max_connections, 2048
    backlog = max(16, min(2048, files // 4))
    return max(1, min(max_connections, files - backlog - SPARE_FDS)), backlog


def uvicorn_options(
    *,
    header_timeout: float = _DEFAULTS.header_timeout,
    max_connections: int = _DEFAULTS.max_connections,
    log_level: str = "warning",
    lifespan: str = "auto",
) -> dict[str, Any]:
    """Settings of uvicorn for serving with the connection guards (docs/serve.md).

    Raises:
        ConfigurationError: a ``header_timeout`` or ``max_connections`` that is not positive.
    """
    positive_number("header_timeout", header_timeout)
    positive_number("max_connections", max_connections, kind=int)
    from milvus_rerank.app.serve.protocol import guarded_protocol

    cap, backlog = connection_limits(max_connections)
    return {
        "http": guarded_protocol(float(header_timeout), cap),
        "ws": "none",
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "backlog": backlog,
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": 10,
        "log_level": log_level,
        "lifespan": lifespan,
    }
