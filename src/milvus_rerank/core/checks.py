"""Checks and small text helpers that several layers share, each written once.

Numbers from options (``positive_number``, ``int_at_least``), a text clipped for a message
(``clip``), whether a host is this machine (``is_loopback``), and cheap upper bounds on the
JSON values in a body, counted before it is parsed (``json_value_bound``, ``json_containers``).
"""

from __future__ import annotations

import ipaddress
import math
import re

from milvus_rerank.core.errors import ConfigurationError

__all__ = [
    "LOOPBACK_NAMES",
    "MAX_WAIT_MS",
    "batch_wait_ms",
    "clip",
    "describe_value",
    "int_at_least",
    "is_loopback",
    "json_containers",
    "json_value_bound",
    "positive_number",
]

#: Host names that always mean this machine (besides ``*.localhost`` and loopback addresses).
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})

#: The longest a batch may wait for company, in milliseconds (longer only stalls callers).
MAX_WAIT_MS = 1000.0

#: A JSON string, escapes included (unrolled: no backtracking per character).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def positive_number(name: str, value: object, *, owner: str = "", kind: type = float) -> None:
    """``value`` as a finite number above 0; ``kind=int`` also refuses floats.

    Raises:
        ConfigurationError: naming ``owner`` (when given), ``name`` and the value.
    """
    allowed: tuple[type, ...] = (int,) if kind is int else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, allowed)
    finite = isinstance(value, int) or (ok and math.isfinite(value))  # type: ignore[arg-type]
    if not ok or not finite or not value > 0:  # type: ignore[operator]
        prefix = f"{owner}: " if owner else ""
        what = "int" if kind is int else ("float" if kind is float and not owner else "number")
        raise ConfigurationError(f"{prefix}{name} must be a positive {what}, got {value!r}")


def int_at_least(name: str, value: object, minimum: int, *, owner: str = "") -> None:
    """``value`` as an int (never a bool) of at least ``minimum``.

    Raises:
        ConfigurationError: naming ``owner`` (when given), ``name`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        prefix = f"{owner}: " if owner else ""
        raise ConfigurationError(f"{prefix}{name} must be an int >= {minimum}, got {value!r}")


def batch_wait_ms(name: str, value: object) -> None:
    """``value`` as milliseconds a batch may wait for company: 0 to ``MAX_WAIT_MS``.

    Raises:
        ConfigurationError: naming ``name`` and the value.
    """
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not 0 <= value <= MAX_WAIT_MS:  # type: ignore[operator]
        raise ConfigurationError(
            f"{name} must be milliseconds from 0 to {MAX_WAIT_MS:,g}, got {value!r}"
        )


def clip(text: str, limit: int, *, one_line: bool = False) -> str:
    """``text`` cut to ``limit`` characters, ``...`` marking a cut; ``one_line`` folds spaces."""
    if one_line:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_value(value: object, limit: int = 60) -> str:
    """A short description of a bad value for an error message: its type and a clipped repr."""
    return f"{type(value).__name__} {clip(repr(value), limit)}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 brackets allowed) is this machine."""
    host = host.lower().rstrip(".")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def json_value_bound(content: bytes, *, in_strings: bool = True) -> int:
    """An upper bound on the JSON values in ``content``: each follows ``[``, ``,`` or ``:``.

    ``in_strings=False`` leaves out the characters inside strings (commas in a text).
    """
    if not in_strings:
        content = _JSON_STRING.sub(b'""', content)
    return content.count(b"[") + content.count(b",") + content.count(b":") + 1


def json_containers(raw: bytes, bound: int) -> int:
    """JSON arrays and objects in ``raw`` (a count past ``bound`` is exact only outside strings).

    A byte count comes first (a millisecond for 2 MB); only past ``bound`` are the strings
    taken out, escapes first, so brackets inside texts do not count. Linear either way.
    """
    count = raw.count(b"[") + raw.count(b"{")
    if count <= bound:
        return count
    bare = _JSON_STRING.sub(b"", raw.replace(b"\\\\", b"").replace(b'\\"', b""))
    return bare.count(b"[") + bare.count(b"{")
