"""Checks on where an API reranker sends its requests: ``base_url``, extra headers, proxies.

Each check raises ``ConfigurationError`` at construction, naming the option and never a value
that could hold a secret. ``server_root`` and ``join_url`` say how a provider's path is
appended to a ``base_url`` that may already end in a version segment; ``proxy_credentials``
finds the secrets of the proxy variables, to scrub.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import urllib.parse
from typing import Any

import httpx

from milvus_rerank.core.base import describe_value
from milvus_rerank.core.checks import is_loopback
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.api.secrets import MIN_KEY_LENGTH, Secret

__all__ = [
    "PROXY_VARS",
    "check_base_url",
    "check_header_value",
    "check_headers",
    "check_proxy_env",
    "join_url",
    "proxy_credentials",
    "server_root",
    "unknown_options",
    "warn_plain_http",
]

logger = logging.getLogger("milvus_rerank.http")

_VERSION_SUFFIX = re.compile(r"/v\d+$")
_VERSION_PREFIX = re.compile(r"^/v\d+/")
#: Extra headers whose values are treated (stored, scrubbed) as secrets.
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|passw|session|credential", re.I)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Headers that frame the request or its connection: httpx writes them from the body; a
#: caller's would contradict them (``Transfer-Encoding`` and ``Content-Length`` both on the
#: wire is the request-smuggling shape). ``Host`` is not one: a gateway reached by address
#: may route by the name it carries (virtual hosting), and httpx sends the caller's.
_FRAMING_HEADERS = frozenset(
    (
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "expect",
    )
)
#: The proxy variables httpx reads, and the proxy schemes it speaks.
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
#: Arguments of earlier releases, and where they went.
_RENAMED = {
    "model": "model_name=...",
    "max_retries": "retry=RetryPolicy(max_retries=...)",
    "deadline": "retry=RetryPolicy(deadline=...)",
}


def check_base_url(owner: str, url: object, source: str = "base_url") -> str:
    """``url`` as a server root: http(s), a host, no credentials, query or fragment.

    ``source`` names where it came from (``base_url`` or an environment variable).

    Raises:
        ConfigurationError: what is wrong, echoing the URL only when it can hold no secret.
    """
    name = "base_url" if source == "base_url" else f"base_url (from {source})"
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{owner}: {name} must be an http(s) URL, got {url!r}")
    url = url.strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:
        # Said before anything echoes the URL: it holds a password.
        raise ConfigurationError(
            f"{owner}: {name} must not carry credentials (user:password@host); pass the key "
            "as api_key=... or in headers={...}, which are never logged or shown"
        )
    if parts is not None and ("?" in url or "#" in url):
        # Not echoed either: a query may hold a token (``?api_key=...``).
        raise ConfigurationError(
            f"{owner}: {name} must be a server root without a query (?...) or fragment "
            "(#...); the provider appends its own path, and keys go in api_key=... or headers"
        )
    try:
        parsed = httpx.URL(url) if "://" in url else None
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(f"{owner}: {name} must be an http(s) URL, got {url!r}")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        # Else every call fails deep in the socket layer with a raw OverflowError.
        raise ConfigurationError(
            f"{owner}: {name}'s port must be from 1 to 65535, got {parsed.port} in {url!r}"
        )
    return url


def server_root(base_url: str) -> str:
    """The server root of a base URL that may end in a version segment (``.../v1``)."""
    return _VERSION_SUFFIX.sub("", base_url)


def join_url(base_url: str, path: str) -> str:
    """Append the provider path; a root ending in a version segment keeps its version."""
    if _VERSION_SUFFIX.search(base_url) and _VERSION_PREFIX.match(path):
        path = path[path.index("/", 1) :]
    return base_url + path


def check_headers(owner: str, headers: object) -> dict[str, str | Secret]:
    """Extra headers as sent; values of secret-looking names kept as ``Secret``.

    Raises:
        ConfigurationError: a bad name or value (never shown), ``Accept-Encoding``, a header
            that frames the request (``Content-Length``, ``Transfer-Encoding``, ``Host``,
            ``Connection``...), or a name given twice in two cases.
    """
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise ConfigurationError(
            f"{owner}: headers must be a dict of str to str, got {type(headers).__name__}"
        )
    checked: dict[str, str | Secret] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise ConfigurationError(f"{owner}: {describe_value(name)} is not a header name")
        if not isinstance(value, str) or any(
            not (0x20 <= ord(ch) <= 0x7E or ch == "\t") for ch in value
        ):
            raise ConfigurationError(
                f"{owner}: the value of header {name!r} must be a str of printable ASCII "
                "without line breaks"
            )
        if name.lower() == "accept-encoding":
            raise ConfigurationError(
                f"{owner}: headers may not set {name!r}: the reranker asks for gzip or deflate "
                "only, which it decodes with a bound on the decoded size"
            )
        if name.lower() in _FRAMING_HEADERS:
            raise ConfigurationError(
                f"{owner}: headers may not set {name!r}: httpx frames each request itself "
                "(its length, encoding and connection from the body, its host from base_url)"
            )
        if name.lower() in {n.lower() for n in checked}:
            raise ConfigurationError(f"{owner}: headers name {name!r} twice (in another case)")
        checked[name] = Secret(value) if _SECRET_HEADER.search(name) else value
    return checked


def check_header_value(owner: str, option: str, value: object) -> str:
    """``value`` if it can go in a header as given: printable ASCII, no line break.

    Raises:
        ConfigurationError: naming ``option``.
    """
    if (
        not isinstance(value, str)
        or not value.strip()
        or any(not (0x20 <= ord(ch) <= 0x7E or ch == "\t") for ch in value)
    ):
        raise ConfigurationError(
            f"{owner}: {option} must be a non-empty str of printable ASCII without line "
            f"breaks (it goes in a header), got {describe_value(value)}"
        )
    return value


def check_proxy_env(owner: str) -> None:
    """Refuse a proxy variable httpx cannot use, naming the variable and never its value.

    Raises:
        ConfigurationError: an unknown proxy scheme, or SOCKS without ``socksio``.
    """
    for var in PROXY_VARS:
        value = os.environ.get(var, "").strip()
        if not value:
            continue
        scheme = value.split("://", 1)[0].lower() if "://" in value else "http"
        if scheme not in _PROXY_SCHEMES:
            shown = repr(scheme) if re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) else "an unknown"
            raise ConfigurationError(
                f"{owner}: the environment variable {var} names a proxy with scheme {shown}; "
                f"httpx speaks {', '.join(_PROXY_SCHEMES)}. Fix or unset {var}."
            )
        if scheme.startswith("socks") and importlib.util.find_spec("socksio") is None:
            raise ConfigurationError(
                f"{owner}: the environment variable {var} names a SOCKS proxy, which needs "
                "the optional package 'socksio': pip install \"httpx[socks]\" (or unset it)"
            )


def proxy_credentials() -> list[Secret]:
    """The credentials in the proxy variables httpx reads, to scrub as keys are scrubbed.

    A proxy refusing a request (407) may echo its ``Proxy-Authorization``, the base64 of
    ``user:password``: the password, ``user:password`` and a user given alone (a token) are
    kept; values shorter than ``MIN_KEY_LENGTH`` cannot be scrubbed and are left out.
    """
    found: list[Secret] = []
    for var in PROXY_VARS:
        value = os.environ.get(var, "").strip()
        if "@" not in value:
            continue
        try:
            parts = urllib.parse.urlsplit(value if "://" in value else f"http://{value}")
            user, password = parts.username, parts.password
        except ValueError:
            continue
        user = urllib.parse.unquote(user or "")
        password = urllib.parse.unquote(password or "")
        for secret in (password, f"{user}:{password}") if password else (user,):
            if len(secret) >= MIN_KEY_LENGTH:
                found.append(Secret(secret))
    return found


_warned_plain_http: set[str] = set()


def warn_plain_http(owner: str, base_url: str, *, sends_secret: bool) -> None:
    """Warn once per host when a secret would cross the network in clear text."""
    url = httpx.URL(base_url)
    if not sends_secret or url.scheme != "http" or is_loopback(url.host):
        return
    if url.host in _warned_plain_http:
        return
    _warned_plain_http.add(url.host)
    logger.warning(
        "%s sends its API key to %s over plain http, readable by anyone on the path; use "
        "https unless this network is trusted",
        owner,
        url.host,
    )


def unknown_options(owner: str, unknown: dict[str, Any]) -> str:
    """A message naming the options ``owner`` does not take (never their values)."""
    parts = []
    for name in sorted(unknown):
        hint = _RENAMED.get(name)
        parts.append(f"{name!r}" + (f" (use {hint})" if hint else ""))
    return f"{owner} got unknown option(s) {', '.join(parts)}"
