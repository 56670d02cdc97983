"""``HTTPReranker``: the contract a provider module fills in, and the wiring behind it.

A provider module sets class variables (where to post, where results and scores sit, its key
variables) and, where its API needs them, overrides the hooks at the top of the class:
``_payload`` (always), ``_results``, ``_usage``, ``_provider_headers``, ``_route`` and
``_milvus_params``. Everything else lives in this package's other modules: ``execution``
(the retry loop, deadline, chunks), ``exchange`` (the I/O), ``body`` (reading a body),
``answers`` (validation), ``secrets`` (keys), ``options`` (``base_url``, headers, proxies).
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
import weakref
from typing import Any, ClassVar

import httpx

from milvus_rerank._version import __version__
from milvus_rerank.core.base import MilvusTarget, Reranker, describe_value
from milvus_rerank.core.checks import int_at_least, positive_number
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.forks import after_fork
from milvus_rerank.core.results import Usage
from milvus_rerank.core.retry import RetryPolicy
from milvus_rerank.providers.api import milvus_params
from milvus_rerank.providers.api.answers import AnswerReader
from milvus_rerank.providers.api.clients import Clients, run_sync
from milvus_rerank.providers.api.execution import Call, Plan
from milvus_rerank.providers.api.options import (
    check_base_url,
    check_headers,
    join_url,
    proxy_credentials,
    unknown_options,
    warn_plain_http,
)
from milvus_rerank.providers.api.secrets import (
    KeyRules,
    Secret,
    ServerText,
    choose_key,
    hide_in_logs,
)
from milvus_rerank.providers.api.slots import RequestSlots
from milvus_rerank.providers.api.usage import usage_count

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "HTTPReranker"]

#: The largest answer read, after decompression, beyond what it may echo of the request
#: (a gzip bomb stops here). A 1,000-document answer without documents is about 50 KB.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 2**20


class HTTPReranker(Reranker):
    """Base of the API rerankers: one request and response mapping per subclass.

    Args:
        model_name: The provider's model name (``None`` for servers that serve one model).
        api_key: The key. Printable ASCII without whitespace, at least ``MIN_KEY_LENGTH``
            (8) characters; ``""`` is refused (None means none). Without it the key is read from
            the provider's environment variables, but only when calling the provider's own API
            over https (``default_base_url``'s host, or ``key_hosts``): a custom ``base_url``
            (a compatible or self-hosted server) gets a key only when passed here, so
            ``COHERE_API_KEY`` never goes to a third-party server. Rerankers with no public API
            (vLLM) read theirs for any ``base_url``: that variable names a self-hosted server.
            A server named by ``base_url_env`` gets the key of ``base_url_env_keys``.
        base_url: The server root (``https://api.cohere.com``); the provider appends its path.
            A root that already ends in a version segment (``.../v1``) is not doubled. No
            credentials (``user:pass@``), query or fragment: keys go in ``api_key`` or
            ``headers``. None: ``base_url_env``'s value when set, else ``default_base_url``.
        timeout: Seconds for one HTTP request (connect, read, write, pool).
        retry: When and how failed requests are retried, and the deadline of a whole call
            (``RetryPolicy()`` by default: 3 retries within 120 s).
        max_batch: Documents per request; longer lists go out in chunks.
        max_concurrency: Requests in flight at once per reranker, over all its calls,
            threads and event loops.
        max_response_bytes: The largest answer accepted, decoded (4 MiB by default), beyond
            what it may echo of the request (its size, plus 256 bytes per document). Larger
            answers, and answers holding far more JSON values than their documents need, are
            refused before parsing.
        http_client: An ``httpx.Client`` for the sync path (not closed by ``close``; another
            type is a ``ConfigurationError``). Its requests run in worker threads: the call
            ends at the deadline whatever the server does, and requests it abandons give
            their slots back at once and have their sockets shut (except a reused keep-alive
            connection still waiting for headers, whose worker ends at the client's read
            timeout).
        http_async_client: An ``httpx.AsyncClient`` to use (not closed by ``aclose``), on the
            event loop that first uses it only: on another one it is a ``ConfigurationError``
            (its pooled connections belong to that loop).
        headers: Extra request headers (values of auth-, key- or token-like names are kept
            and scrubbed as secrets). Merged case-insensitively over the reranker's own; one
            naming the key's header (``Authorization``) conflicts with ``api_key`` and is
            refused. ``Accept-Encoding`` is the reranker's own (gzip, deflate: decoded with a
            bound), and refused here, as are the headers httpx frames a request with
            (``Content-Length``, ``Transfer-Encoding``, ``Host``, ``Connection``...).
    """

    #: Declared capability (see ``Reranker``): its own async path over ``httpx.AsyncClient``.
    native_async = True

    # -- the provider contract ---------------------------------------------------------------

    #: Where the request goes, appended to ``base_url``.
    path: ClassVar[str] = "/rerank"
    #: The provider's public server root, or None when the user must name one.
    default_base_url: ClassVar[str | None] = None
    #: Environment variables holding the key, in order of preference; read only for the
    #: provider's own API (see ``api_key``), or for any server when there is no public API.
    env_vars: ClassVar[tuple[str, ...]] = ()
    #: Hosts of the provider's own API besides ``default_base_url``'s (regional endpoints),
    #: where the key from ``env_vars`` is sent too.
    key_hosts: ClassVar[tuple[str, ...]] = ()
    #: An environment variable naming the server when no ``base_url`` is passed (the
    #: provider's SDK reads it, e.g. Cohere's ``CO_API_URL``), and the variables of
    #: ``env_vars`` whose key goes to the server it names (the SDK sends that key there).
    base_url_env: ClassVar[str | None] = None
    base_url_env_keys: ClassVar[tuple[str, ...]] = ()
    #: The header the key goes in, and how its value is written.
    auth_header: ClassVar[str] = "Authorization"
    auth_scheme: ClassVar[str] = "Bearer "
    default_model: ClassVar[str | None] = None
    #: Documents per request the provider accepts (None: no documented limit).
    default_max_batch: ClassVar[int | None] = None
    #: Where the results sit in the answer and how their fields are named.
    results_key: ClassVar[str | None] = "results"
    score_key: ClassVar[str] = "relevance_score"
    #: A response header reporting the tokens an answer consumed, read instead of the
    #: tokens ``_usage`` finds (TEI's router sends ``x-compute-tokens``), or None.
    usage_header: ClassVar[str | None] = None

    def _payload(self, query: str, documents: list[str]) -> dict[str, Any]:
        """The JSON body for one request over ``documents``, asking for every score."""
        raise NotImplementedError

    def _results(self, body: Any) -> Any:
        """The list of per-document results inside a parsed answer.

        Raises:
            ValueError: the answer has another shape (it becomes ``InvalidResponseError``).
        """
        if self.results_key is None:
            return body
        if not isinstance(body, dict) or self.results_key not in body:
            raise ValueError(f"expected a JSON object with {self.results_key!r}")
        return body[self.results_key]

    def _usage(self, body: Any) -> Usage:
        """What one parsed answer reports it consumed (tokens, units); nothing by default.

        Providers read their documented usage field with ``_usage_count``; the HTTP layer
        counts the request itself and sums the answers of a call's chunks.
        """
        return Usage()

    def _usage_count(self, body: Any, *path: str) -> int | None:
        """The count at ``body[path[0]][path[1]]...``; None if absent or no count (logged)."""
        return usage_count(self.provider, body, *path)

    def _provider_headers(self) -> dict[str, str]:
        """Headers the provider's API needs besides the key (e.g. an API version)."""
        return {}

    def _env_base_url(self, url: str) -> str:
        """The server root that ``base_url_env``'s (checked) value names, as the SDK reads it."""
        return url

    def _route(self) -> str:
        """The path appended to ``base_url`` (the class's ``path`` unless a provider picks)."""
        return self.path

    def _milvus_params(
        self, target: MilvusTarget, *, credential: str | None = None
    ) -> dict[str, Any]:
        """Refuse: Milvus has no provider for this API (providers it can call override this)."""
        milvus_params.no_milvus_provider(type(self).__name__, self.provider, target)

    def _milvus_lite_cohere_params(self) -> dict[str, Any]:
        """Milvus Lite's one rerank provider, ``cohere``, aimed at this server's Cohere v2 API."""
        return milvus_params.lite_cohere_params(self.model_name, self._api_key, self.base_url)

    def _with_milvus_credential(
        self, params: dict[str, Any], credential: str | None, *, server_knows_key: bool
    ) -> dict[str, Any]:
        """``params`` with ``credential`` (a name in ``milvus.yaml``), never a raw key."""
        return milvus_params.with_credential(
            type(self).__name__,
            params,
            credential,
            sends_key=self._api_key is not None,
            server_knows_key=server_knows_key,
        )

    def _public_api_for_milvus(self, milvus_provider: str) -> None:
        """Refuse a ``base_url`` other than the public API for a Milvus provider calling it."""
        milvus_params.require_public_api(
            type(self).__name__, self.base_url, self.default_base_url, milvus_provider
        )

    # -- construction ------------------------------------------------------------------------

    def __init__(
        self,
        model_name: str | None = None,
        api_key: str | Secret | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_batch: int | None = None,
        max_concurrency: int = 32,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        http_client: httpx.Client | None = None,
        http_async_client: httpx.AsyncClient | None = None,
        headers: dict[str, str] | None = None,
        **unknown: Any,
    ) -> None:
        name = type(self).__name__
        if unknown:
            raise ConfigurationError(unknown_options(name, unknown))
        self.model_name = model_name if model_name is not None else self.default_model
        if self.model_name is not None and (
            not isinstance(self.model_name, str) or not self.model_name.strip()
        ):
            raise ConfigurationError(
                f"{name}: model_name must be a non-empty str, got {model_name!r}"
            )
        self.base_url, from_env = self._choose_base_url(base_url)
        self.url = join_url(self.base_url, self._route())
        positive_number("timeout", timeout, owner=name)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(
                f"{name}: retry must be a milvus_rerank.RetryPolicy, got {describe_value(retry)}"
            )
        int_at_least("max_concurrency", max_concurrency, 1, owner=name)
        int_at_least("max_response_bytes", max_response_bytes, 1024, owner=name)
        if max_batch is not None:
            int_at_least("max_batch", max_batch, 1, owner=name)
        self.timeout = float(timeout)
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_batch = max_batch if max_batch is not None else self.default_max_batch
        self.max_concurrency = max_concurrency
        self.max_response_bytes = max_response_bytes
        self._extra_headers = check_headers(name, headers)
        self._api_key, self._unread_env_var = choose_key(
            self._key_rules(from_env), api_key, self._extra_headers
        )
        secrets = [self._api_key] if self._api_key is not None else []
        secrets += [v for v in self._extra_headers.values() if isinstance(v, Secret)]
        warn_plain_http(name, self.base_url, sends_secret=bool(secrets))
        self._text = ServerText(self.provider, secrets + proxy_credentials())
        hide_in_logs(self._text)
        self._clients = Clients(name, max_concurrency, http_client, http_async_client)
        self._slots = RequestSlots(max_concurrency)
        with _live_lock:
            _live.add(self)

    def _choose_base_url(self, base_url: str | None) -> tuple[str, bool]:
        """The checked server root, and whether it came from ``base_url_env``."""
        name = type(self).__name__
        if base_url is None and self.base_url_env is not None:
            from_env = os.environ.get(self.base_url_env, "")
            if from_env.strip():
                checked = check_base_url(name, from_env, self.base_url_env)
                return self._env_base_url(checked), True
        root = base_url if base_url is not None else self.default_base_url
        if root is None:
            raise ConfigurationError(
                f"{name} needs base_url, the root of your server (e.g. 'http://localhost:8000')"
            )
        return check_base_url(name, root), False

    def _key_rules(self, base_url_from_env: bool) -> KeyRules:
        """Where the key may come from: the environment's goes to the provider's own API."""
        allowed: tuple[str, ...] = ()
        if self.default_base_url is None or self._own_api():
            allowed = self.env_vars
        elif base_url_from_env:
            allowed = self.base_url_env_keys
        return KeyRules(
            owner=type(self).__name__,
            base_url=self.base_url,
            env_vars=self.env_vars,
            env_allowed=allowed,
            required=self._own_api(),
            header=self.auth_header,
        )

    def _own_api(self) -> bool:
        """Whether ``base_url`` is the provider's own public API, over https."""
        if self.default_base_url is None:
            return False
        url = httpx.URL(self.base_url)
        hosts = {httpx.URL(self.default_base_url).host, *self.key_hosts}
        return url.scheme == "https" and url.host in hosts and url.port in (None, 443)

    @property
    def api_key(self) -> Secret | None:
        """The key as a ``Secret`` (never printed), or None."""
        return self._api_key

    def _headers(self) -> dict[str, str]:
        """The request's headers: each name once, whatever its case."""
        merged: dict[str, tuple[str, str]] = {}
        defaults = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"milvus-rerank/{__version__}",
            **self._provider_headers(),
        }
        for name, value in defaults.items():
            merged[name.lower()] = (name, value)
        for name, extra in self._extra_headers.items():
            value = extra.get_secret_value() if isinstance(extra, Secret) else extra
            merged[name.lower()] = (name, value)
        # Only what the body reader decodes with a bound (httpx would add br and zstd).
        merged["accept-encoding"] = ("Accept-Encoding", "gzip, deflate")
        if self._api_key is not None:
            merged[self.auth_header.lower()] = (
                self.auth_header,
                self.auth_scheme + self._api_key.get_secret_value(),
            )
        return dict(merged.values())

    def _repr_fields(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "base_url": self.base_url,
            "max_batch": self.max_batch,
        }

    # -- calls -------------------------------------------------------------------------------

    def _score(self, query: str, documents: list[str]) -> list[float]:
        return self._score_usage(query, documents)[0]

    async def _ascore(self, query: str, documents: list[str]) -> list[float]:
        return (await self._ascore_usage(query, documents))[0]

    def _score_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        context = contextvars.copy_context()  # an injected client's workers run in it
        call = self._call(query, documents, private=True, context=context)
        return run_sync(call, type(self).__name__)

    async def _ascore_usage(self, query: str, documents: list[str]) -> tuple[list[float], Usage]:
        return await self._call(query, documents, private=False)

    async def _call(
        self,
        query: str,
        documents: list[str],
        *,
        private: bool,
        context: contextvars.Context | None = None,
    ) -> tuple[list[float], Usage]:
        """One call: on the private loop of the sync path (``private``), or the caller's."""
        plan = self._plan()  # before any await: a close from now on ends the call
        exchange = await self._clients.exchange(private=private, context=context)
        return await Call(plan, exchange).score(query, documents)

    def _plan(self) -> Plan:
        """What the requests of a call starting now share."""
        reader = AnswerReader(
            self._text,
            results=self._results,
            score_key=self.score_key,
            usage=self._usage,
            usage_header=self.usage_header,
            base_url=self.base_url,
            unread_env_var=self._unread_env_var,
        )
        return Plan(
            provider=self.provider,
            url=self.url,
            headers=self._headers(),
            payload=self._payload,
            reader=reader,
            timeout=self.timeout,
            retry=self.retry,
            max_batch=self.max_batch,
            max_concurrency=self.max_concurrency,
            max_response_bytes=self.max_response_bytes,
            slots=self._slots,
            closed=functools.partial(self._clients.closed_since, self._clients.closes),
        )

    def close(self) -> None:
        """Close the client of the sync path, if this reranker made it; made again on next use.

        A call running meanwhile ends with its answer or ``ProviderUnavailableError``.
        """
        self._clients.close()

    async def aclose(self) -> None:
        """Close the clients this reranker made: the sync path's and this event loop's."""
        await self._clients.aclose()

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's clients and slots (not its threads').

        A call in flight at the fork holds slots no thread of the child will give back.
        """
        self._clients.after_fork()
        self._slots = RequestSlots(self.max_concurrency)


#: Every HTTP reranker alive in this process, for the fork handler.
_live: weakref.WeakSet[HTTPReranker] = weakref.WeakSet()
_live_lock = threading.Lock()


@after_fork
def _reset_live() -> None:
    """Reset what a fork copied mid-use: locks possibly held, slots of calls in flight."""
    global _live_lock
    _live_lock = threading.Lock()
    for reranker in list(_live):
        reranker._after_fork()
