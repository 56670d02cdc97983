"""A test client calling a rerank endpoint exactly as Milvus's ``vllm`` and ``tei`` providers do.

It sends the bytes and headers their Go code sends and checks what it checks (the comment
below names the files and commits), so a test can say "Milvus accepts this server".

Usage (the Ray tier points it at its deployment the same way)::

    scores = milvus_rerank_call(server.url, "tei", query, documents, credential=key)
    scores = milvus_function_call(server_side_params(reranker, [query]), documents,
                                  credentials={"serve": key})

``milvus_rerank_call`` returns one score per document, in input order, float32 as Milvus
holds them, or raises ``MilvusCallError`` where Milvus would fail the search. ``strict``
(default) also holds a vllm answer to ``rerankScoresByIndex``, the contract that code states
for every rerank service; ``strict=False`` is that vllm version's position mapping exactly.
"""

# What it mirrors, read in milvus-io/milvus (the stored versions, by commit):
#
# - ``internal/util/function/rerank/vllm_rerank_provider.go``
#   @ 09504f1f00428c4834d5654742a6e45b456b946a and ``tei_rerank_provider.go``
#   @ 1bf3af6b7ca303099a6c1865aa2a010956af5507: the params
#   (keys lowercased; ``endpoint``, ``max_client_batch_size`` default 32 by ``strconv.Atoi``,
#   > 0; vllm ``truncate_prompt_tokens`` by ``ParseInt``; tei ``truncate`` by ``ParseBool`` and
#   ``truncation_direction`` exactly ``Left``/``Right``), the key from ``credential`` (a name in
#   ``milvus.yaml``'s credential section), and how an answer becomes scores: tei through
#   ``rerankScoresByIndex`` (the answer must hold exactly one result per document, every
#   index in range and none twice, else an error); vllm, in that version, by position after
#   sorting by index (fewer results leave 0.0 scores, more panic: "index out of range").
# - ``rerankScoresByIndex``, ``parseMaxBatch`` and ``NewModelProvider``: one file of package
#   ``internal/util/function/rerank`` in its go-api/v3 versions (the search index named no
#   path or commit for it), and ``internal/util/function/chain/expr/rerank_model_expr.go``
#   @ 1285fae4ee0a0071cf59347e2e3c2bd4998c7d64: documents cut into batches of
#   ``max_client_batch_size`` in order, one ``Rerank`` per batch, and an error unless a batch
#   gets as many scores as it had documents (a null text is sent as "").
# - ``internal/util/function/models/vllm/vllm_client.go`` @ 3ae9ca060a6f9235fb3b5bdc3f061fe17fcbcc84
#   and ``models/tei/tei.go`` @ 059bfd6a940363809380a014fa9a0b793a691d1c: the URL is the
#   endpoint with its path replaced by ``/rerank``; the body is Go's ``json.Marshal`` of
#   ``{"query", "documents"}`` (vllm) or ``{"query", "texts"}`` (tei) plus the truncation
#   params (keys sorted, compact, ``<>&`` escaped); the headers ``Content-Type:
#   application/json`` and, with a key, ``Authorization: Bearer <key>``; the answer decoded
#   into ``{"results": [{"index", "relevance_score"}]}`` (vllm) or ``[{"index", "score"}]``
#   (tei) with ``encoding/json``'s rules (keys matched case-insensitively, unknown keys
#   ignored, null is the zero value, an int field refuses ``1.0``, scores are float32) and
#   sorted by index.
# - ``internal/util/function/models/common.go`` @ 78e4f01f62eb5774e2acacee72071439caffffab
#   (``PostRequest``/``retrySend``): Go's default client (``User-Agent: Go-http-client/1.1``,
#   ``Accept-Encoding: gzip``), a 30 s deadline over the whole call, any status but 200 an
#   error, and 3 attempts for any error of the exchange (4xx included) with 1 s then 2 s
#   (plus up to a quarter of jitter) between them; an answer that does not decode is not
#   retried.

from __future__ import annotations

import json
import random
import re
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

__all__ = [
    "MilvusCallError",
    "decode_answer",
    "go_json",
    "milvus_function_call",
    "milvus_rerank_call",
    "read_answer",
    "request_body",
    "request_headers",
]

PROVIDERS = ("vllm", "tei")
DEFAULT_BATCH = 32
ATTEMPTS = 3
DEADLINE_S = 30.0
_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_FLOAT32_MAX = 3.4028234663852886e38
_INT64 = 2**63


class MilvusCallError(Exception):
    """Where Milvus fails the search: a refused param, a failed exchange, an answer it rejects.

    Attributes:
        status: the HTTP status of the last attempt, None when no answer came (or it was 200).
        attempts: how many requests were sent for the batch that failed.
    """

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


def _go_int(key: str, value: str) -> int:
    if not _GO_INT.fullmatch(value) or not -_INT64 <= int(value) < _INT64:
        raise MilvusCallError(f"Rerank params error, {key}: {value} is not a number")
    return int(value)


def _params(provider: str, params: Mapping[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """``(max batch, truncation params)`` as ``newVllmProvider``/``newTeiProvider`` read them.

    Values are strings on the wire (pymilvus sends ``str(value)``, lists as JSON).
    """
    batch = DEFAULT_BATCH
    extra: dict[str, Any] = {}
    for raw_key, raw_value in (params or {}).items():
        key, value = raw_key.lower(), raw_value if isinstance(raw_value, str) else str(raw_value)
        if key == "max_client_batch_size":
            if not _GO_INT.fullmatch(value):
                raise MilvusCallError(f"[{key} param's value: {value}] is not a valid number")
            batch = int(value)
            if batch <= 0:
                raise MilvusCallError(f"[{key} param's value: {value}] must be greater than 0")
        elif provider == "vllm" and key == "truncate_prompt_tokens":
            extra[key] = _go_int(key, value)
        elif provider == "tei" and key == "truncate":
            if value not in _GO_TRUE | _GO_FALSE:
                raise MilvusCallError(f"Rerank params error, {key}: {value} is not bool type")
            extra[key] = value in _GO_TRUE
        elif provider == "tei" and key == "truncation_direction":
            if value not in ("Left", "Right"):
                raise MilvusCallError(
                    f"[{key} param's value: {value}] is not invalid, only supports [Left/Right]"
                )
            extra[key] = value
    return batch, extra


def rerank_url(endpoint: str, path: str = "/rerank") -> str:
    """``NewBaseURL(endpoint)`` with ``Path = "/rerank"`` (the query string is kept)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MilvusCallError(f"endpoint: [{endpoint}] is not a valid http/https link")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def go_json(value: Any) -> bytes:
    """``encoding/json.Marshal``: sorted keys, compact, ``<>&`` and U+2028/9 escaped, UTF-8."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    # A Go string holds no lone surrogate: Marshal writes U+FFFD for invalid UTF-8.
    return re.sub("[\ud800-\udfff]", "\ufffd", text).encode("utf-8")


def request_body(
    provider: str, query: str, documents: Sequence[str], extra: Mapping[str, Any] | None = None
) -> bytes:
    """The bytes Milvus posts for one batch."""
    key = "documents" if provider == "vllm" else "texts"
    return go_json({"query": query, key: list(documents), **(extra or {})})


def request_headers(api_key: str | None) -> dict[str, str]:
    """What Go's default client sends beside ``Host`` and ``Content-Length``."""
    headers = {
        "User-Agent": "Go-http-client/1.1",
        "Content-Type": "application/json",
        "Accept-Encoding": "gzip",
    }
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class _GoFloat(float):
    """A JSON number written with a fraction or exponent: Go refuses it for an int field."""


def _refuse_constant(name: str) -> float:
    raise MilvusCallError(f"Call service failed, unmarshal response failed, errs:[{name}]")


def _decode(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8", errors="replace")
        return json.loads(text, parse_float=_GoFloat, parse_constant=_refuse_constant)
    except ValueError as exc:  # JSONDecodeError
        raise MilvusCallError(
            f"Call service failed, unmarshal response failed, errs:[{exc}]"
        ) from exc


def _field(obj: dict[str, Any], name: str) -> Any:
    """A struct field's value: the last key equal to ``name`` ignoring case (Go's rule)."""
    found = None
    for key, value in obj.items():
        if key.lower() == name:
            found = value
    return found


def _type_error(what: str, value: Any) -> MilvusCallError:
    kind = "null" if value is None else type(value).__name__
    return MilvusCallError(
        f"Call service failed, unmarshal response failed, errs:[cannot unmarshal {kind} "
        f"into Go struct field {what}]"
    )


def _int(obj: dict[str, Any], name: str, what: str) -> int:
    value = _field(obj, name)
    if value is None:
        return 0
    if type(value) is not int or not -_INT64 <= value < _INT64:
        raise _type_error(what, value)
    return value


def _float32(obj: dict[str, Any], name: str, what: str) -> float:
    value = _field(obj, name)
    if value is None:
        return 0.0
    if type(value) is bool or not isinstance(value, int | float) or abs(value) > _FLOAT32_MAX:
        raise _type_error(what, value)
    return float(struct.unpack("f", struct.pack("f", float(value)))[0])


def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    """A Go slice of structs: null is empty, a null element is the zero struct."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _type_error(what, value)
    items = []
    for item in value:
        if item is not None and not isinstance(item, dict):
            raise _type_error(what, item)
        items.append(item or {})
    return items


def _check_vllm_envelope(body: dict[str, Any]) -> None:
    for name in ("id", "model"):
        value = _field(body, name)
        if value is not None and not isinstance(value, str):
            raise _type_error(f"RerankResponse.{name}", value)
    usage = _field(body, "usage")
    if usage is not None:
        if not isinstance(usage, dict):
            raise _type_error("RerankResponse.usage", usage)
        _int(usage, "total_tokens", "RerankResponse.usage.total_tokens")


def decode_answer(provider: str, raw: bytes) -> list[tuple[int, float]]:
    """``(index, score)`` pairs as Go decodes the answer, sorted by index."""
    body = _decode(raw)
    if provider == "vllm":
        if body is not None and not isinstance(body, dict):
            raise _type_error("vllm.RerankResponse", body)
        body = body or {}
        _check_vllm_envelope(body)
        items, score_key = (
            _objects(_field(body, "results"), "RerankResponse.results"),
            "relevance_score",
        )
    else:
        items, score_key = _objects(body, "tei.RerankResponse"), "score"
    pairs = [
        (
            _int(item, "index", f"{provider}.index"),
            _float32(item, score_key, f"{provider}.{score_key}"),
        )
        for item in items
    ]
    return sorted(pairs, key=lambda pair: pair[0])


def scores_by_index(count: int, pairs: Sequence[tuple[int, float]]) -> list[float]:
    """``rerankScoresByIndex``: one result per document, each index in range and once."""
    if len(pairs) != count:
        raise MilvusCallError(
            "get rerank scores failed, the number of docs and scores does not match "
            f"docs:[{count}], scores:[{len(pairs)}]"
        )
    scores = [0.0] * count
    filled = [False] * count
    for index, score in pairs:
        if not 0 <= index < count or filled[index]:
            raise MilvusCallError(
                "get rerank scores failed, the rerank service returned an invalid or "
                f"duplicated result index [{index}] for [{count}] docs"
            )
        filled[index] = True
        scores[index] = score
    return scores


def read_answer(provider: str, raw: bytes, count: int, *, strict: bool = True) -> list[float]:
    """The scores Milvus takes from one 200 answer to a batch of ``count`` documents."""
    pairs = decode_answer(provider, raw)
    if provider == "tei" or strict:
        return scores_by_index(count, pairs)
    if len(pairs) > count:  # vllmProvider.Rerank: scores[i] for i beyond len(docs)
        raise MilvusCallError(
            f"panic: runtime error: index out of range [{count}] with length {count}"
        )
    return [score for _, score in pairs] + [0.0] * (count - len(pairs))


def _post(
    client: httpx.Client, url: str, body: bytes, headers: Mapping[str, str], *, retry_wait: float
) -> bytes:
    """``PostRequest``'s ``retrySend``: 3 attempts, a 30 s deadline over all of them."""
    deadline = time.monotonic() + DEADLINE_S
    error = MilvusCallError("Call service failed")
    for attempt in range(ATTEMPTS):
        left = deadline - time.monotonic()
        if left <= 0:
            raise MilvusCallError("context deadline exceeded", attempts=attempt)
        try:
            # A bare Request carries only these headers (plus Host and Content-Length), not
            # the client's defaults (Accept, Connection).
            request = httpx.Request("POST", url, content=body, headers=dict(headers))
            request.extensions["timeout"] = httpx.Timeout(left).as_dict()
            answer = client.send(request)
        except httpx.HTTPError as exc:
            error = MilvusCallError(f"Call service failed, errs:[{exc}]", attempts=attempt + 1)
        else:
            if answer.status_code == 200:
                return answer.content
            error = MilvusCallError(
                f"Call service failed, errs:[{answer.status_code}, {answer.text[:200]}]",
                status=answer.status_code,
                attempts=attempt + 1,
            )
        if attempt < ATTEMPTS - 1:
            backoff = retry_wait * (1 << attempt)
            pause = backoff + random.uniform(0, backoff / 4)
            if time.monotonic() + pause >= deadline:
                raise MilvusCallError("context deadline exceeded", attempts=attempt + 1)
            time.sleep(pause)
    raise error


def milvus_rerank_call(
    endpoint: str,
    provider: str,
    query: str,
    documents: Sequence[str],
    *,
    credential: str | None = None,
    params: Mapping[str, Any] | None = None,
    strict: bool = True,
    retry_wait: float = 1.0,
    path: str = "/rerank",
    transport: httpx.BaseTransport | None = None,
) -> list[float]:
    """Score ``documents`` through ``endpoint`` as Milvus's ``provider`` does, in input order.

    Args:
        endpoint: the Function's ``endpoint`` (its path is replaced by ``/rerank``).
        provider: ``"vllm"`` or ``"tei"``.
        query: the search query's text.
        documents: the texts Milvus sends, after its own de-duplication by primary key
            (equal texts of different rows are sent twice).
        credential: the API key the Function's ``credential`` names (None: no header).
        params: the Function's other params (``max_client_batch_size``, truncation...).
        strict: also hold a vllm answer to ``rerankScoresByIndex`` (tei always is).
        retry_wait: the first backoff in seconds (Go: 1; tests shorten it).
        path: where it posts; early 2.6 servers (``rerank/model_function.go``
            @ 3526b5b255ea5a13b030af200c5efd0dcc52401f) posted vllm's body to ``/v2/rerank``.
        transport: an httpx transport instead of the network (the client's own tests).

    Raises:
        MilvusCallError: wherever Milvus would fail the search.
    """
    if provider not in PROVIDERS:
        raise MilvusCallError(f"unknown rerank model provider:{provider}")
    batch, extra = _params(provider, params)
    url = rerank_url(endpoint, path)
    headers = request_headers(credential)
    scores: list[float] = []
    with httpx.Client(transport=transport, trust_env=False) as client:
        for start in range(0, len(documents), batch):
            chunk = list(documents[start : start + batch])
            raw = _post(
                client,
                url,
                request_body(provider, query, chunk, extra),
                headers,
                retry_wait=retry_wait,
            )
            got = read_answer(provider, raw, len(chunk), strict=strict)
            if len(got) != len(chunk):  # RerankModelExpr.rerankBatch
                raise MilvusCallError(
                    f"model: rerank service returned {len(got)} scores for {len(chunk)} docs"
                )
            scores.extend(got)
    return scores


def milvus_function_call(
    function_params: Mapping[str, Any],
    documents: Sequence[str],
    *,
    credentials: Mapping[str, str] | None = None,
    query_index: int = 0,
    strict: bool = True,
    retry_wait: float = 1.0,
    transport: httpx.BaseTransport | None = None,
) -> list[float]:
    """Run a model-rerank Function's params (``server_side_params``'s dict) as Milvus would.

    ``credentials`` is ``milvus.yaml``'s credential section, name to API key; a
    ``credential`` it lacks fails as ``GetAPIKeyCredential`` does.

    Raises:
        MilvusCallError: wherever Milvus would fail the search.
    """
    lowered = {k.lower(): v for k, v in function_params.items()}
    provider = str(lowered.get("provider", "")).lower()
    endpoint = str(lowered.get("endpoint", ""))
    if not endpoint:
        raise MilvusCallError("rerank function lost params endpoint")
    queries = lowered.get("queries")
    if isinstance(queries, str):
        queries = json.loads(queries)
    if not isinstance(queries, list) or not queries:
        raise MilvusCallError("Rerank function lost params queries")
    key = None
    if "credential" in lowered:
        name = str(lowered["credential"])
        if name not in (credentials or {}):
            raise MilvusCallError(f"credential {name} not found")
        key = (credentials or {})[name]
    rest = {
        k: v
        for k, v in lowered.items()
        if k not in ("provider", "endpoint", "queries", "credential", "reranker")
    }
    return milvus_rerank_call(
        endpoint,
        provider,
        queries[query_index],
        documents,
        credential=key,
        params=rest,
        strict=strict,
        retry_wait=retry_wait,
        transport=transport,
    )
