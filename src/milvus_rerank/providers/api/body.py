"""Reading an answer's body: streamed raw, inflated here within a cap, parsed as hard JSON.

``BodyReader`` takes raw bytes off the wire and inflates them itself (httpx's decoders have
no bound), never past the room left. ``too_many_values`` refuses an answer holding far more
JSON values than its documents need before it is parsed; ``parse_json`` refuses an object
naming a key twice.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any, Literal

import httpx

from milvus_rerank.core.checks import json_value_bound
from milvus_rerank.core.errors import InvalidResponseError
from milvus_rerank.providers.api.secrets import ServerText

__all__ = [
    "ERROR_BODY_BYTES",
    "BodyReader",
    "DuplicateKey",
    "decode_text",
    "parse_json",
    "too_many_values",
]

#: What an answer may hold per document beyond the request's own size (the result's index,
#: score and field names), so that answers echoing the documents (vLLM) always fit.
PER_DOCUMENT_BYTES = 256
#: Error bodies are read only this far: enough to say what went wrong.
ERROR_BODY_BYTES = 64 * 2**10
#: Answers larger than this have their JSON values counted before parsing ...
_SHAPE_CHECK_BYTES = 64 * 2**10
#: ... and are refused past this many per document, plus a margin (usage, metadata).
_VALUES_PER_DOCUMENT = 32
_VALUES_MARGIN = 1024

_DECODED: dict[str, Literal["gzip", "deflate"]] = {
    "gzip": "gzip",
    "x-gzip": "gzip",
    "deflate": "deflate",
}
_REFUSED = frozenset({"br", "zstd", "compress", "x-compress"})


class BodyReader:
    """Collects a streamed body, decoded with a bound, up to the limit (errors: 64 KiB).

    httpx's own decoders inflate a whole network read at once (zstd, or ``gzip, gzip``,
    without any bound), so a few KB on the wire could become GiBs before a size check. One
    ``gzip``/``deflate`` layer is decoded; ``br``/``zstd`` (never asked for) and stacked
    layers are refused; other codings are ignored, as httpx ignores them. The limit for a 2xx
    answer is ``max_response_bytes`` plus what the answer may echo: the request's own size and
    ``PER_DOCUMENT_BYTES`` per document.

    Args:
        response: The answer, its headers read.
        request: What was sent (its size counts in the limit).
        count: Documents in the request.
        max_response_bytes: The reranker's cap on a decoded answer.
        text: Makes the server's text fit for the errors.
    """

    def __init__(
        self,
        response: httpx.Response,
        request: httpx.Request,
        count: int,
        max_response_bytes: int,
        text: ServerText,
    ) -> None:
        self.response = response
        self.max_response_bytes = max_response_bytes
        self.text = text
        self.is_error = not 200 <= response.status_code < 300
        sent = request.headers.get("content-length", "")
        echo = (int(sent) if sent.isdigit() else 0) + PER_DOCUMENT_BYTES * count
        self.limit = ERROR_BODY_BYTES if self.is_error else max_response_bytes + echo
        self.parts: list[bytes] = []
        self.size = 0
        self.raw_size = 0
        declared = response.headers.get("content-length", "")
        if not self.is_error and declared.isdigit() and int(declared) > self.limit:
            raise self._too_big(f"it declares {int(declared):,} bytes")
        self.coding = self._coding(response.headers.get("content-encoding", ""))
        self.inflater: Any = None
        if self.coding is not None:
            wbits = zlib.MAX_WBITS | 16 if self.coding == "gzip" else zlib.MAX_WBITS
            self.inflater = zlib.decompressobj(wbits)
        self.first = True

    def _coding(self, header: str) -> Literal["gzip", "deflate"] | None:
        codings = [c.strip().lower() for c in header.split(",")]
        known = [c for c in codings if c in _DECODED or c in _REFUSED]
        if len(known) > 1:
            raise self.text.invalid(
                f"its Content-Encoding {self.text.safe(header, 60)!r} stacks {len(known)} "
                "layers; one gzip or deflate layer is decoded",
                self.response,
            )
        if not known:
            return None
        if known[0] in _REFUSED:
            raise self.text.invalid(
                f"its Content-Encoding {known[0]!r} was not asked for (Accept-Encoding: gzip, "
                "deflate)",
                self.response,
            )
        return _DECODED[known[0]]

    def feed(self, raw: bytes) -> bool:
        """Take bytes off the wire; True when nothing more is needed (stop reading)."""
        self.raw_size += len(raw)
        if self.inflater is None:
            return self.add(raw)
        if not self.is_error and self.raw_size > self.limit + ERROR_BODY_BYTES:
            raise self._too_big(f"more than {self.raw_size:,} bytes on the wire")
        data = raw
        while data and not self.inflater.eof:
            room = self.limit - self.size
            failure = None
            try:
                out = self.inflater.decompress(data, room + 1)
            except zlib.error as exc:
                out, failure = b"", str(exc)
            if failure is not None:
                if self.first and self.coding == "deflate":  # raw deflate, without zlib's header
                    self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                    self.first = False
                    continue
                raise self.text.invalid(
                    f"the answer could not be decoded ({self.coding}): {self.text.safe(failure)}",
                    self.response,
                )
            self.first = False
            if out and self.add(out):
                return True
            data = self.inflater.unconsumed_tail
        # Past the stream's end nothing more is read: what follows is ignored, as by httpx,
        # and a server trickling it would otherwise hold the call until its deadline.
        return bool(self.inflater.eof)

    def add(self, chunk: bytes) -> bool:
        """Keep decoded ``chunk``; True when an error body has enough (stop reading)."""
        self.size += len(chunk)
        if self.size > self.limit:
            if self.is_error:
                self.parts.append(chunk[: len(chunk) - (self.size - self.limit)])
                return True
            raise self._too_big(f"more than {self.limit:,} bytes decoded")
        self.parts.append(chunk)
        return False

    def content(self) -> bytes:
        """What was read, decoded."""
        return b"".join(self.parts)

    def _too_big(self, why: str) -> InvalidResponseError:
        return self.text.invalid(
            f"the answer is larger than max_response_bytes={self.max_response_bytes:,} "
            f"plus what it may echo of the request ({why})",
            self.response,
        )


class DuplicateKey(ValueError):
    """A JSON object names ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__("duplicate key")
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it names a key twice.

    ``json`` keeps the last value silently, where another parser (a validating proxy) keeps
    the first: the answer would not mean one thing.
    """
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def _parse_int(text: str) -> int | float:
    """A JSON integer; one past Python's digit limit is infinite rather than unparsable.

    So an absurd number in one field (a usage count) leaves the rest of the answer readable;
    validation then refuses it wherever it matters (a score, an index).
    """
    try:
        return int(text)
    except ValueError:
        return -math.inf if text.startswith("-") else math.inf


def parse_json(content: bytes) -> Any:
    """``content`` parsed as JSON, integers of any length readable.

    Raises:
        DuplicateKey: an object names a key twice.
        ValueError: not JSON (``UnicodeDecodeError`` and ``RecursionError`` pass through).
    """
    return json.loads(content, parse_int=_parse_int, object_pairs_hook=_unique_keys)


def too_many_values(content: bytes, count: int) -> tuple[int, int] | None:
    """(values, budget) when ``content`` holds far more JSON values than ``count`` documents need.

    Parsing costs memory per value, not per byte: 32 MiB of ``[],`` parse into 880 MiB of
    lists. A real answer holds a few values per document (index, score, maybe the echoed
    document), so past ``_VALUES_PER_DOCUMENT`` per document (plus a margin for metadata) it
    is too many. Counted cheaply on the bytes; string contents (an echoed document full of
    commas) are left out only when the cheap count is too high.
    """
    if len(content) <= _SHAPE_CHECK_BYTES:
        return None
    budget = _VALUES_MARGIN + _VALUES_PER_DOCUMENT * count
    if json_value_bound(content) <= budget:
        return None
    values = json_value_bound(content, in_strings=False)
    return (values, budget) if values > budget else None


def decode_text(response: httpx.Response, content: bytes) -> str:
    """``content`` as text in the answer's charset (UTF-8 when it names none Python knows)."""
    try:
        return content.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return content.decode("utf-8", errors="replace")
