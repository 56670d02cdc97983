"""Who ``serve`` answers: the API key, and the ``Host`` and media type a keyless server takes.

Without a key, a web page the user visits could post to the server (no preflight for a
``text/plain`` body) or read its answers by DNS rebinding: a keyless server answers 415 to a
body that is not JSON and 421 to a ``Host`` it does not serve (docs/serve.md, "Authentication").
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import TYPE_CHECKING

from milvus_rerank.app.serve.failures import HTTPError
from milvus_rerank.core.base import describe_value
from milvus_rerank.core.checks import LOOPBACK_NAMES
from milvus_rerank.core.errors import ConfigurationError

# The one import of a private name from another folder: the providers' key check is to be
# made public (``check_key``) by the HTTP layer's split; then only this line changes.
from milvus_rerank.providers.api.secrets import check_key

if TYPE_CHECKING:
    from starlette.requests import Request

    from milvus_rerank.app.serve.state import ServeState

__all__ = ["check_api_key", "check_auth", "check_hosts", "check_origin", "host_name"]


def check_api_key(value: object, source: str = "api_key") -> str:
    """The server's API key from ``source``, stripped; refused as the clients' keys are.

    Raises:
        ConfigurationError: not a str, blank, with whitespace, a control or non-ASCII
            character inside, or shorter than 8 characters (the message never shows it).
    """
    if not isinstance(value, str):
        raise ConfigurationError(
            f"serve: the API key from {source} must be a str, got {type(value).__name__}"
        )
    return check_key("serve", value, source)


def host_name(value: str) -> str:
    """The name in a ``Host`` header: lower-case, without the port, brackets or final dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_hosts(allowed_hosts: object) -> frozenset[str] | None:
    """``allowed_hosts`` as host names (``"*"`` kept), None where none were given.

    Raises:
        ConfigurationError: not a list of host names.
    """
    if allowed_hosts is None:
        return None
    if isinstance(allowed_hosts, str) or not isinstance(allowed_hosts, (list, tuple, set)):
        raise ConfigurationError(
            f"allowed_hosts must be a list of host names, got {describe_value(allowed_hosts)}"
        )
    names = set()
    for name in allowed_hosts:
        if not isinstance(name, str) or not name.strip() or any(c in name for c in " \t\r\n/"):
            raise ConfigurationError(
                f"allowed_hosts holds {describe_value(name)}: not a host name (or '*')"
            )
        names.add(host_name(name))
    return frozenset(names)


def check_auth(state: ServeState, request: Request) -> None:
    """Refuse (401, ``WWW-Authenticate: Bearer``) a request without the server's key, if any."""
    if state.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    given = token.strip().encode("utf-8", "surrogateescape")
    # Compare the key whatever the scheme, so the time taken tells nothing either way.
    if not hmac.compare_digest(given, state.api_key) or scheme.lower() != "bearer":
        raise HTTPError(
            401,
            "missing or wrong API key (Authorization: Bearer <key>)",
            {"WWW-Authenticate": "Bearer"},  # RFC 9110: a 401 names the scheme it takes
        )


def check_origin(state: ServeState, request: Request, with_body: bool = True) -> None:
    """Refuse what a web page could send: a foreign ``Host`` (421), a keyless non-JSON (415)."""
    host = request.headers.get("host")
    if state.hosts is not None and host is not None:
        name = host_name(host)
        allowed = name in LOOPBACK_NAMES or name.endswith(".localhost") or _is_ip(name)
        if not allowed and name not in state.hosts:
            raise HTTPError(
                421,
                f"this server does not answer for the host {describe_value(name)} "
                "(Host header); allow it with --allowed-hosts (allowed_hosts=)",
            )
    if with_body and state.api_key is None:
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json" and not (
            media.startswith("application/") and media.endswith("+json")
        ):
            got = f"got {describe_value(media)}" if media else "got none"
            raise HTTPError(
                415, f"the request body must be sent as Content-Type: application/json, {got}"
            )
