"""``serve``'s limits: one dataclass holding every default, and the fixed bounds beside it.

``ServeLimits`` is the single source of the defaults ``create_app``, ``run_server``,
``BackgroundServer`` and the ``serve`` command use; the command builds its flags and their
help from the fields' metadata. docs/serve.md says what each limit answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from milvus_rerank.core.checks import MAX_WAIT_MS, batch_wait_ms, positive_number

__all__ = [
    "BYTES_PER_BODY_PIECE",
    "CHARS_PER_TOKEN",
    "CONTAINERS_PER_DOCUMENT",
    "EXTRA_CONTAINERS",
    "FREE_BODY_PIECES",
    "MAX_HEADER_BYTES",
    "MAX_MESSAGE_CHARS",
    "MAX_WAIT_MS",
    "UNKNOWN_WINDOW",
    "ServeLimits",
    "flag_fields",
]

#: Characters kept per token of the model window (a generous multiple of the ~4 an English
#: token covers), and the window assumed where the reranker does not say.
CHARS_PER_TOKEN = 32
UNKNOWN_WINDOW = 8192
#: JSON arrays and objects a body may hold: so many a document, plus a fixed allowance.
CONTAINERS_PER_DOCUMENT = 4
EXTRA_CONTAINERS = 256
#: Pieces a body may come in: so many, plus one per so many bytes.
FREE_BODY_PIECES = 1024
BYTES_PER_BODY_PIECE = 256
#: h11's limit on a request's headers (and on any incomplete event), in bytes.
MAX_HEADER_BYTES = 16 * 1024
#: The longest error message sent; echoed values are clipped much shorter.
MAX_MESSAGE_CHARS = 1000


def _flag(help_text: str, kind: str) -> dict[str, str]:
    """A field's ``serve`` flag: its help (the CLI adds the default) and its kind of value."""
    return {"help": help_text, "kind": kind}


@dataclass(frozen=True)
class ServeLimits:
    """Every limit of ``serve``, with its default (docs/serve.md, "Limits").

    Fields with a ``serve`` flag carry its help in their metadata (``kind``: ``"int"`` a
    positive int, ``"float"`` a positive number, ``"wait"`` milliseconds from 0 to
    ``MAX_WAIT_MS``).

    Raises:
        ConfigurationError: a limit that is not positive, or a ``max_wait_ms`` outside 0 to
            1,000 (checked in the order ``create_app`` always checked them).
    """

    max_wait_ms: float = field(
        default=2.0, metadata=_flag("how long a request may wait to share a batch", "wait")
    )
    header_timeout: float = field(
        default=10.0,
        metadata=_flag(
            "seconds a connection may take to send its request headers, else it is closed",
            "float",
        ),
    )
    max_connections: int = field(
        default=1000,
        metadata=_flag(
            "open connections at most, also bounded by the open-file limit; past it the "
            "longest wait for headers is closed, else 503",
            "int",
        ),
    )
    max_body_bytes: int = field(
        default=2_000_000, metadata=_flag("larger request bodies get 413", "int")
    )
    body_timeout: float = field(
        default=30.0,
        metadata=_flag("seconds a request body may take to arrive, else 408", "float"),
    )
    max_documents: int = field(
        default=1000, metadata=_flag("more documents in one request get 422", "int")
    )
    max_document_chars: int | None = field(
        default=None,
        metadata=_flag(
            "characters of each text kept before tokenization (default: "
            f"{CHARS_PER_TOKEN} per token of the model window, times --max-passages with "
            "--long-documents max_passage)",
            "int",
        ),
    )
    max_batch_tokens: int = field(
        default=8192,
        metadata=_flag(
            "tokens per model call (a local model's own count, else ~4 characters a token); "
            "large requests are cut into such micro-batches, interleaved with others",
            "int",
        ),
    )
    max_pending_pairs: int = field(
        default=16_384,
        metadata=_flag("pairs waiting to be scored before new requests get 429", "int"),
    )
    max_concurrent_requests: int = field(
        default=512, metadata=_flag("requests in flight before new ones get 429", "int")
    )
    graceful_timeout: float = field(
        default=25.0,
        metadata=_flag(
            "seconds the requests in flight get to finish after SIGTERM or Ctrl-C; those "
            "still running then get 503 with Retry-After (keep it a few seconds under "
            "Kubernetes' terminationGracePeriodSeconds, 30 by default)",
            "float",
        ),
    )
    #: Pairs in one model call.
    max_batch_pairs: int = 256
    #: Micro-batches (or whole requests) scored at once; None: the reranker's own default.
    batch_workers: int | None = None
    #: Seconds without progress, while requests wait on scoring, before ``/health`` says 503.
    stall_after: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "max_batch_pairs",
            "max_body_bytes",
            "max_documents",
            "max_batch_tokens",
            "max_pending_pairs",
            "max_concurrent_requests",
        ):
            positive_number(name, getattr(self, name), kind=int)
        if self.batch_workers is not None:
            positive_number("batch_workers", self.batch_workers, kind=int)
        positive_number("body_timeout", self.body_timeout)
        positive_number("graceful_timeout", self.graceful_timeout)
        if self.max_document_chars is not None:
            positive_number("max_document_chars", self.max_document_chars, kind=int)
        positive_number("stall_after", self.stall_after)
        batch_wait_ms("max_wait_ms", self.max_wait_ms)
        positive_number("header_timeout", self.header_timeout)
        positive_number("max_connections", self.max_connections, kind=int)

    @property
    def max_containers(self) -> int:
        """JSON arrays and objects a body may hold before it is parsed."""
        return CONTAINERS_PER_DOCUMENT * self.max_documents + EXTRA_CONTAINERS


def flag_fields() -> list[tuple[str, Any, dict[str, str]]]:
    """``(name, default, metadata)`` of each limit with a ``serve`` flag, in field order."""
    return [(f.name, f.default, dict(f.metadata)) for f in fields(ServeLimits) if f.metadata]
