"""Secrets of the API rerankers: keys checked and chosen, kept hidden, scrubbed from text.

``Secret`` never shows its value; ``check_key`` refuses a key that cannot be one;
``choose_key`` picks the key to send (``api_key``, else an environment variable, under the
rules in ``KeyRules``); ``Redactor`` removes every piece of a secret from text, in any spelling
a server may echo; the log filter installed at import does so on httpx's and httpcore's logs.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import re
import string
import threading
import urllib.parse
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from milvus_rerank.core.checks import clip
from milvus_rerank.core.errors import ConfigurationError, InvalidResponseError
from milvus_rerank.core.forks import after_fork

__all__ = [
    "MIN_KEY_LENGTH",
    "REDACTED",
    "KeyRules",
    "Redactor",
    "Secret",
    "ServerText",
    "check_key",
    "choose_key",
    "hide_in_logs",
    "normalise",
]

logger = logging.getLogger("milvus_rerank.http")

#: Keys shorter than this are refused: no real key is, and scrubbing a short one from
#: messages would garble them (scrubbing "a" replaces every "a").
MIN_KEY_LENGTH = 8
#: What a secret is replaced with.
REDACTED = "**********"
#: Text longer than this is cut before it is scrubbed (it is shown clipped anyway).
SCRUB_LIMIT = 64 * 2**10
#: Any text that came from a server is clipped to this many characters, after scrubbing.
SERVER_TEXT_LIMIT = 300

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
#: Backslash escapes a server's JSON, repr or PHP encoder writes: ``\\uXXXX``, ``\\xXX``, ``\\/``.
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|\\([^0-9A-Za-z\s])")


class Secret:
    """A string that never shows itself in ``str``, ``repr`` or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


def check_key(owner: str, value: str, source: str) -> str:
    """A usable key from ``source`` (``api_key`` or an environment variable), stripped.

    Raises:
        ConfigurationError: naming where the key came from and what is wrong, never the key.
    """
    key = value.strip()
    problem = None
    if not key:
        problem = "is blank"
    elif any(not 0x21 <= ord(ch) <= 0x7E for ch in key):
        problem = (
            "contains whitespace, a control character or a non-ASCII character, which cannot "
            "go in an HTTP header (a key pasted with a line break?)"
        )
    elif len(key) < MIN_KEY_LENGTH:
        problem = f"is shorter than {MIN_KEY_LENGTH} characters, too short to be a real key"
    if problem is not None:
        raise ConfigurationError(f"{owner}: the API key from {source} {problem}")
    return key


@dataclass(frozen=True)
class KeyRules:
    """Where a reranker may find its key, and where it may send one from the environment.

    Attributes:
        owner: The reranker's class name, for messages.
        base_url: Where requests go.
        env_vars: Variables holding the key, in order of preference.
        env_allowed: The variables of ``env_vars`` whose key may go to ``base_url``: all of
            them for the provider's own API (or a provider with no public API), fewer or none
            for another server.
        required: Whether a key is required (the provider's own public API).
        header: The header the key goes in; ``headers`` setting it carry the credentials.
    """

    owner: str
    base_url: str
    env_vars: tuple[str, ...]
    env_allowed: tuple[str, ...]
    required: bool
    header: str


def choose_key(
    rules: KeyRules, api_key: str | Secret | None, headers: dict[str, str | Secret]
) -> tuple[Secret | None, str | None]:
    """The key to send, and the first key variable that was set but not sent (or None).

    ``api_key`` wins; ``headers`` naming the key's header carry the credentials instead (both
    is an error); else the first set variable of ``env_vars`` that ``env_allowed`` lets go.

    Raises:
        ConfigurationError: a bad or blank key, credentials passed two ways, or a required key
            missing (naming the variables, never a value).
    """
    owner = rules.owner
    if isinstance(api_key, Secret):
        api_key = api_key.get_secret_value()
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigurationError(f"{owner}: api_key must be a str, got {type(api_key).__name__}")
    in_headers = next((n for n in headers if n.lower() == rules.header.lower()), None)
    if api_key is not None:
        if not api_key.strip():
            raise ConfigurationError(
                f"{owner}: the API key from api_key is blank; pass api_key=None to send no key"
            )
        if in_headers is not None:
            raise ConfigurationError(
                f"{owner}: headers set {in_headers!r}, the header api_key goes in; pass "
                "the credentials one way only"
            )
        return Secret(check_key(owner, api_key, "api_key")), None
    if in_headers is not None:
        return None, None  # the caller's own header carries the credentials
    unread = None
    for var in rules.env_vars:
        value = os.environ.get(var)
        if not value:
            continue
        if var in rules.env_allowed:
            return Secret(check_key(owner, value, f"the environment variable {var}")), None
        if unread is None:
            # A provider's key goes to the provider only, never to a compatible server that
            # some base_url names (and could log it), unless passed as api_key.
            unread = var
            logger.info(
                "%s: %s is set but not sent to %s, which is not the provider's own API; "
                "pass api_key=... to send a key there",
                owner,
                var,
                rules.base_url,
            )
    if rules.required:
        names = " or ".join(rules.env_vars)
        raise ConfigurationError(f"{owner} needs an API key: pass api_key=... or set {names}")
    return None, unread


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1) or match.group(2)
    if code is None:
        return match.group(3)
    char = chr(int(code, 16))
    return "\ufffd" if 0xD800 <= ord(char) <= 0xDFFF else char  # no lone surrogates


def normalise(text: str) -> str:
    r"""Server text with its escapes decoded: backslash, percent (any case) and HTML escapes.

    A server echoing a key may spell it ``sk-ab\/cd``, ``sk-ab%2fcd`` or ``&#115;k-ab``;
    scrubbing works on what such text means. Repeated (at most 3 times) for double encoding.
    """
    for _ in range(3):
        decoded = html.unescape(urllib.parse.unquote(_ESCAPE.sub(_unescape, text)))
        if decoded == text:
            break
        text = decoded
    return text


class Redactor:
    """Removes every run of ``MIN_KEY_LENGTH`` or more characters of a secret from text.

    Not only the whole key: a server may echo a prefix, cut it at a length limit, or split it
    between its message and a request id. A secret is matched case-insensitively, as sent, as
    base64 or base32 (at every alignment, so inside ``Basic base64(user:key)`` too) and as the
    hex of its UTF-8 or UTF-16 (either byte order), in text whose escapes are decoded first.
    Matching is one pass over the text against the set of the secrets' 8-character windows. A
    text that ends with a secret's first characters (or starts with its last), at least 4 of
    them, loses them too: a cut left them there.
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        forms: set[str] = set()
        self.edges: list[str] = []
        for raw in secrets:
            if len(raw) < MIN_KEY_LENGTH:
                continue
            forms.add(raw)
            self.edges.append(raw.translate(_ASCII_LOWER))
            data = raw.encode()
            forms.update(text.hex() for text in (data, raw.encode("utf-16-le")))
            forms.add(raw.encode("utf-16-be").hex())
            for pad in range(3):  # the key's base64 inside a longer encoded text
                for encode in (base64.b64encode, base64.urlsafe_b64encode):
                    encoded = encode(b"\0" * pad + data).decode()
                    forms.add(encoded[-(-8 * pad // 6) : 8 * (pad + len(data)) // 6])
            for pad in range(5):  # and its base32, 5 bits a character
                encoded = base64.b32encode(b"\0" * pad + data).decode()
                forms.add(encoded[-(-8 * pad // 5) : 8 * (pad + len(data)) // 5])
        width = MIN_KEY_LENGTH
        self.windows = frozenset(
            form.translate(_ASCII_LOWER)[i : i + width]
            for form in forms
            for i in range(len(form) - width + 1)
        )

    def scrub(self, text: str) -> str:
        """Server text (cut at ``SCRUB_LIMIT``) with its escapes decoded and secrets removed."""
        if not self.windows:
            return text
        return self.redact(normalise(text[:SCRUB_LIMIT]))

    def redact(self, text: str) -> str:
        """``text`` with every secret window (and cut edge) replaced, without decoding it."""
        if not self.windows:
            return text
        spans = self._spans(text.translate(_ASCII_LOWER))
        if not spans:
            return text
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out, at = [], 0
        for start, end in merged:
            out += [text[at:start], REDACTED]
            at = end
        out.append(text[at:])
        return "".join(out)

    def _spans(self, low: str) -> list[list[int]]:
        """Where secret windows, and the cut edges of a secret, sit in lower-cased text."""
        width = MIN_KEY_LENGTH
        windows = self.windows
        spans: list[list[int]] = []
        for i in range(len(low) - width + 1):
            if low[i : i + width] in windows:
                if spans and i <= spans[-1][1]:
                    spans[-1][1] = i + width
                else:
                    spans.append([i, i + width])
        for secret in self.edges:
            for size in range(min(len(secret), width) - 1, 3, -1):
                if low.endswith(secret[:size]):
                    spans.append([len(low) - size, len(low)])
                    break
            for size in range(min(len(secret), width) - 1, 3, -1):
                if low.startswith(secret[-size:]):
                    spans.insert(0, [0, size])
                    break
        return spans


class ServerText:
    """Text that came from a server, made fit for a message: scrubbed first, then clipped.

    Args:
        provider: The provider's name, which every error names.
        secrets: What this reranker sends (its key, secret-looking headers): never shown.
    """

    def __init__(self, provider: str, secrets: Sequence[Secret]) -> None:
        self.provider = provider
        self._secrets = tuple(secrets)
        self._redactor: Redactor | None = None

    def secret_values(self) -> list[str]:
        """The secrets themselves, for the scrubbers only."""
        return [s.get_secret_value() for s in self._secrets]

    def redactor(self) -> Redactor:
        """What scrubs this reranker's secrets, built on first use."""
        if self._redactor is None:
            self._redactor = Redactor(self.secret_values())
        return self._redactor

    def safe(self, text: str, limit: int = SERVER_TEXT_LIMIT) -> str:
        """Server text fit for a message: scrubbed first, then one line clipped to ``limit``."""
        return clip(self.redactor().scrub(text), limit, one_line=True)

    def describe(self, value: object) -> str:
        """A value from an answer, by type and its repr scrubbed before clipping."""
        return f"{type(value).__name__} {self.safe(repr(value), 60)}"

    def request_id(self, response: httpx.Response) -> str | None:
        """The answer's request id header, made safe, if it has one."""
        for header in ("x-request-id", "request-id", "x-trace-id"):
            if response.headers.get(header):
                return self.safe(response.headers[header], 100)
        return None

    def invalid(self, message: str, response: httpx.Response | None = None) -> InvalidResponseError:
        """The error for an answer that cannot be used, its message made safe."""
        return InvalidResponseError(
            self.safe(f"{self.provider} returned an invalid rerank answer: {message}", 1000),
            provider=self.provider,
            status_code=None if response is None else response.status_code,
            request_id=None if response is None else self.request_id(response),
        )


#: Every reranker's ``ServerText`` alive in this process, whose secrets the log filter scrubs.
_holders: weakref.WeakSet[ServerText] = weakref.WeakSet()
_holders_lock = threading.Lock()


def hide_in_logs(text: ServerText) -> None:
    """Scrub ``text``'s secrets from httpx's and httpcore's log records while it lives."""
    with _holders_lock:
        _holders.add(text)


@after_fork
def _reset_lock() -> None:
    global _holders_lock
    _holders_lock = threading.Lock()


class _SecretLogFilter(logging.Filter):
    """Scrubs live rerankers' secrets from httpx's and httpcore's log records.

    httpcore logs every response's headers at DEBUG; a server echoing the key in one
    (``Location: ...?k=<key>``, ``Set-Cookie``) would put it in the log. A record that holds
    a piece of a secret (in any spelling ``Redactor`` knows) is rewritten, others untouched.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple[frozenset[str], Redactor] = (frozenset(), Redactor([]))

    def filter(self, record: logging.LogRecord) -> bool:
        with _holders_lock:
            holders = list(_holders)
        secrets = frozenset(s for h in holders for s in h.secret_values())
        if not secrets:
            return True
        if self._cache[0] != secrets:
            self._cache = (secrets, Redactor(list(secrets)))
        redactor = self._cache[1]
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the logging module's to report
            return True
        text = normalise(message)
        scrubbed = redactor.redact(text)
        if scrubbed != text:
            record.msg, record.args = scrubbed, None
        return True


_log_filter = _SecretLogFilter()
for _name in (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
):
    logging.getLogger(_name).addFilter(_log_filter)
