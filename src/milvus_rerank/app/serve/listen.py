"""The sockets ``serve`` listens on, bound before the model loads, and the URL they answer at.

``bind_sockets`` binds a host and port as uvicorn would (every address the host resolves to),
so a busy port or an address that is not this machine's is one ``ConfigurationError`` at
once; ``http_url`` writes the URL, an IPv6 address in brackets.
"""

from __future__ import annotations

import errno
import socket

from milvus_rerank.core.errors import ConfigurationError

__all__ = ["bind_sockets", "http_url"]


def http_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 address bracketed (``http://[::1]:8000``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _bind_error(host: str, port: int, exc: OSError) -> str:
    """One line saying why ``host``:``port`` cannot be listened on."""
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: it is not an address of this machine"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"port {port} on {host} needs privileges this process lacks (use a port >= 1024)"
    return f"cannot listen on {host} port {port}: {exc.strerror or exc}"


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets bound (not yet listening) to every address of ``host`` on ``port``.

    As uvicorn binds them: ``SO_REUSEADDR``, an IPv6 socket for IPv6 only. Port 0 picks a
    free port, the same on each address.

    Raises:
        ConfigurationError: the port is in use, the address is not this machine's, the host
            does not resolve, or the port is not a TCP port.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be a TCP port (0 to 65535), got {port!r}")
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ConfigurationError(f"cannot listen on {host!r}: {reason}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # the port the first address got
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as exc:
                raise ConfigurationError(_bind_error(host, port, exc)) from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
