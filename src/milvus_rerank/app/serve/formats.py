"""The wire formats ``serve`` speaks: Cohere v2, vLLM/Jina and TEI, one class each.

A format reads a request body into an ``Asked`` (its options checked), renders a ranking
(``Ranked``) as its answer, and renders an error in its own shape. docs/serve.md lists each
format's fields and options.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from milvus_rerank.app.serve.failures import HTTPError
from milvus_rerank.app.serve.limits import MAX_MESSAGE_CHARS
from milvus_rerank.core.base import describe_value
from milvus_rerank.core.checks import clip
from milvus_rerank.core.results import RerankResult, Usage

__all__ = [
    "COHERE",
    "RANK_ROUTES",
    "RERANK",
    "TEI",
    "VLLM",
    "Asked",
    "CohereV2Format",
    "Ranked",
    "RerankRouteFormat",
    "TEIFormat",
    "VLLMFormat",
    "WireFormat",
]

Headers = dict[str, str] | None


@dataclass(frozen=True)
class Asked:
    """One request as its format reads it (unchecked values: the handler checks them)."""

    query: object
    documents: object
    top_n: object = None
    instruction: object = None
    #: Whether each result carries its text (Cohere's ``return_documents``, TEI's
    #: ``return_text``; vLLM's answer always does).
    with_texts: bool = False


@dataclass(frozen=True)
class Ranked:
    """One request's ranking: its results, the documents scored, their characters kept, usage."""

    results: list[RerankResult]
    documents: int
    characters: int
    usage: Usage | None


def window_option(
    name: str, value: object, none_values: tuple[object, ...], window: int | None
) -> None:
    """Token limits are honoured when they reach the window (the server truncates there)."""
    if value in none_values and not isinstance(value, bool):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HTTPError(400, f"{name} must be a positive int, got {describe_value(value)}")
    if window is None or value < window:
        raise HTTPError(
            400,
            f"{name}={value} is not supported by this server: it truncates each pair to the "
            f"model window ({window or 'unknown'} tokens) only",
        )


def flag(body: dict[str, Any], name: str, status: int) -> bool:
    """A boolean option; JSON ``null`` or absent is false."""
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise HTTPError(status, f"{name} must be a bool, got {describe_value(value)}")
    return bool(value)


class WireFormat(ABC):
    """One wire format: how a request is read and how answers and errors are written."""

    #: The format's name in logs and tests.
    name: ClassVar[str]
    #: The status of an invalid request (a bad query, documents or option).
    invalid_status: ClassVar[int] = 400

    def pick(self, body: dict[str, Any]) -> WireFormat:
        """The format that reads ``body`` (a route serving several chooses by the body)."""
        return self

    @abstractmethod
    def parse(self, body: dict[str, Any], window: int | None, max_chars: int) -> Asked:
        """The request in ``body``, its format's options checked.

        Raises:
            HTTPError: an option this server refuses.
        """

    @abstractmethod
    def answer(self, asked: Asked, ranked: Ranked, model: str) -> tuple[object, Headers]:
        """The JSON answer and its extra headers; ``model`` is the served model name."""

    @abstractmethod
    def error_body(self, status: int, message: str) -> object:
        """An error in this format's shape (``message`` already clipped)."""

    def error(self, status: int, message: str) -> object:
        """An error in this format's shape, its message at most ``MAX_MESSAGE_CHARS``."""
        return self.error_body(status, clip(message, MAX_MESSAGE_CHARS))


class CohereV2Format(WireFormat):
    """Cohere's v2 rerank (``/v2/rerank``): ``{"id", "results", "meta"}``."""

    name = "cohere"

    def parse(self, body: dict[str, Any], window: int | None, max_chars: int) -> Asked:
        """Cohere's fields; ``max_tokens_per_doc`` below the window is refused."""
        window_option("max_tokens_per_doc", body.get("max_tokens_per_doc"), (None,), window)
        with_documents = flag(body, "return_documents", 400)
        return Asked(
            body.get("query"),
            body.get("documents"),
            body.get("top_n"),
            body.get("instruction"),
            with_documents,
        )

    def answer(self, asked: Asked, ranked: Ranked, model: str) -> tuple[object, Headers]:
        """Results with ``relevance_score``; usage in ``meta`` as Cohere puts it."""
        usage = ranked.usage
        meta: dict[str, Any] = {"api_version": {"version": "2"}}
        if usage is not None and usage.search_units is not None:  # an upstream's own bill
            meta["billed_units"] = {"search_units": usage.search_units}
        if usage is not None and usage.tokens is not None:
            meta["tokens"] = {"input_tokens": usage.tokens}
        results = [
            {
                "index": r.index,
                "relevance_score": r.score,
                **({"document": {"text": r.text}} if asked.with_texts else {}),
            }
            for r in ranked.results
        ]
        return {"id": str(uuid.uuid4()), "results": results, "meta": meta}, None

    def error_body(self, status: int, message: str) -> object:
        """``{"id", "message"}``."""
        return {"id": str(uuid.uuid4()), "message": message}


_VLLM_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    408: "RequestTimeoutError",
    413: "PayloadTooLargeError",
    415: "UnsupportedMediaTypeError",
    421: "MisdirectedRequestError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
}


class VLLMFormat(WireFormat):
    """vLLM's and Jina's rerank (``/v1/rerank``): results with their text, and ``usage``."""

    name = "vllm"

    def parse(self, body: dict[str, Any], window: int | None, max_chars: int) -> Asked:
        """The fields vLLM reads; ``top_n`` 0 is all, ``truncate_prompt_tokens`` -1 the window."""
        window_option(
            "truncate_prompt_tokens", body.get("truncate_prompt_tokens"), (None, -1), window
        )
        top_n = body.get("top_n")
        if isinstance(top_n, int) and not isinstance(top_n, bool) and top_n == 0:
            top_n = None  # vLLM: 0 (or absent, or null) means all; any other value is checked
        return Asked(body.get("query"), body.get("documents"), top_n, body.get("instruction"))

    def answer(self, asked: Asked, ranked: Ranked, model: str) -> tuple[object, Headers]:
        """``{"id", "model", "usage", "results"}``."""
        usage = ranked.usage
        return {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": model,
            "usage": {
                "total_tokens": usage.tokens if usage is not None else None,
                "documents": ranked.documents,
                "characters": ranked.characters,
            },
            "results": [
                {"index": r.index, "document": {"text": r.text}, "relevance_score": r.score}
                for r in ranked.results
            ],
        }, None

    def error_body(self, status: int, message: str) -> object:
        """``{"error": {"message", "type", "param", "code"}}``."""
        error_type = _VLLM_TYPES.get(status, "BadRequestError")
        return {"error": {"message": message, "type": error_type, "param": None, "code": status}}


_TEI_TYPES = {
    401: "Unauthorized",
    429: "Overloaded",
    500: "Backend",
    502: "Backend",
    503: "Backend",
}


class TEIFormat(WireFormat):
    """Text Embeddings Inference's rerank (a body with ``texts``): a bare array of results."""

    name = "tei"
    invalid_status = 422

    def parse(self, body: dict[str, Any], window: int | None, max_chars: int) -> Asked:
        """TEI's fields; ``raw_scores`` and a left truncation are refused.

        ``truncate=false`` refuses (413) a query or a text longer than ``max_chars``, as TEI
        refuses an input past its window.
        """
        if flag(body, "raw_scores", 422):
            raise HTTPError(
                422,
                "raw_scores=true is not supported by this server (it returns the "
                "reranker's scores only)",
            )
        direction = body.get("truncation_direction", "Right")
        if direction not in ("Right", "right", None):
            raise HTTPError(
                422,
                f"truncation_direction={describe_value(direction)} is not supported: only 'Right'",
            )
        truncate = flag(body, "truncate", 422)
        with_text = flag(body, "return_text", 422)
        query, texts = body.get("query"), body.get("texts")
        if not truncate:
            named = [("query", query)]
            if isinstance(texts, list):
                named += [(f"texts[{i}]", text) for i, text in enumerate(texts)]
            for name, text in named:
                if isinstance(text, str) and len(text) > max_chars:
                    raise HTTPError(
                        413,
                        f"{name} has {len(text)} characters, more than the {max_chars} this "
                        "server tokenizes; pass truncate=true to truncate it",
                    )
        return Asked(query, texts, None, body.get("instruction"), with_text)

    def answer(self, asked: Asked, ranked: Ranked, model: str) -> tuple[object, Headers]:
        """``[{"index", "score", "text"?}]``; the tokens in TEI's ``x-compute-tokens`` header."""
        answer = [
            {"index": r.index, "score": r.score, **({"text": r.text} if asked.with_texts else {})}
            for r in ranked.results
        ]
        tokens = ranked.usage.tokens if ranked.usage is not None else None
        return answer, {"x-compute-tokens": str(tokens)} if tokens is not None else None

    def error_body(self, status: int, message: str) -> object:
        """``{"error", "error_type"}``."""
        return {"error": message, "error_type": _TEI_TYPES.get(status, "Validation")}


class RerankRouteFormat(VLLMFormat):
    """``/rerank``, where Milvus's ``tei`` and ``vllm`` providers both post.

    A body with ``texts`` is TEI's; any other body, and an error found before the body is
    parsed, is vLLM's.
    """

    def pick(self, body: dict[str, Any]) -> WireFormat:
        """TEI for a body with ``texts``, else vLLM."""
        return TEI if "texts" in body else self


COHERE = CohereV2Format()
VLLM = VLLMFormat()
TEI = TEIFormat()
RERANK = RerankRouteFormat()

#: The rank routes (``POST``) and the wire format each answers in: what the app mounts and
#: what the metrics label (one list, so a route added is counted under its own label).
RANK_ROUTES: tuple[tuple[str, WireFormat], ...] = (
    ("/v2/rerank", COHERE),
    ("/v1/rerank", VLLM),
    ("/rerank", RERANK),
)
