"""The shared pieces of how Milvus calls an API reranker server-side (a Function's params).

A provider module's ``_milvus_params`` builds its own params from these: the refusal for a
provider Milvus has no provider for, Milvus Lite's one (Cohere v2) provider aimed at this
server, a ``credential`` instead of a raw key, and the refusal of a ``base_url`` that Milvus's
provider would silently swap for the one in its ``milvus.yaml``.
"""

from __future__ import annotations

from typing import Any, NoReturn

from milvus_rerank.core.base import MilvusTarget
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.api.options import server_root
from milvus_rerank.providers.api.secrets import Secret

__all__ = ["lite_cohere_params", "no_milvus_provider", "require_public_api", "with_credential"]


def no_milvus_provider(owner: str, provider: str, target: MilvusTarget) -> NoReturn:
    """Refuse: Milvus has no provider for this API.

    Raises:
        ConfigurationError: pointing to client-side reranking.
    """
    if target == "milvus-lite":
        raise ConfigurationError(
            f"Milvus Lite's only server-side rerank provider is 'cohere' (Cohere's v2 API); "
            f"a {owner} does not speak it. Use target='milvus' with a Milvus server, or rerank "
            "client-side with milvus_rerank.milvus.rerank_hits."
        )
    raise ConfigurationError(
        f"Milvus cannot call a {owner} itself: its server-side model rerank has no provider "
        f"for the {provider} API. Rerank client-side with "
        "milvus_rerank.milvus.rerank_hits instead."
    )


def lite_cohere_params(
    model_name: str | None, api_key: Secret | None, base_url: str
) -> dict[str, Any]:
    """Milvus Lite's one rerank provider, ``cohere``, aimed at this server's Cohere v2 API.

    Milvus Lite runs in this process, so it is handed the key itself ("EMPTY" for none).
    """
    return {
        "provider": "cohere",
        "model_name": model_name or "default",
        "api_key": api_key.get_secret_value() if api_key is not None else "EMPTY",
        "base_url": server_root(base_url) + "/v2",
    }


def with_credential(
    owner: str,
    params: dict[str, Any],
    credential: str | None,
    *,
    sends_key: bool,
    server_knows_key: bool,
) -> dict[str, Any]:
    """``params`` with ``credential`` (a name in the server's ``milvus.yaml``): never a raw key.

    ``server_knows_key``: the Milvus provider finds a key without one (from its ``milvus.yaml``
    or environment), so a keyed reranker (``sends_key``) needs no ``credential``.

    Raises:
        ConfigurationError: a blank credential, or a keyed reranker needing one.
    """
    if credential is not None:
        if not isinstance(credential, str) or not credential.strip():
            raise ConfigurationError(
                f"credential must name a credential of milvus.yaml, got {credential!r}"
            )
        return {**params, "credential": credential}
    if sends_key and not server_knows_key:
        raise ConfigurationError(
            f"this {owner} sends an API key, but a Milvus server never takes a "
            "raw key in a Function's params: add the key to the credential section of "
            "milvus.yaml and pass credential='<its name>'"
        )
    return params


def require_public_api(
    owner: str, base_url: str, default_base_url: str | None, milvus_provider: str
) -> None:
    """Refuse a self-hosted ``base_url`` for a Milvus provider that calls the public API.

    Milvus 2.6's ``milvus_provider`` reads its URL from the server's ``milvus.yaml``, not from
    the Function's params, so passing this reranker's ``base_url`` on is impossible and
    dropping it would silently swap endpoints.

    Raises:
        ConfigurationError: ``base_url`` is not the provider's public API.
    """
    if default_base_url is None or server_root(base_url) == server_root(default_base_url):
        return
    raise ConfigurationError(
        f"this {owner} calls {base_url}, but a Milvus server's "
        f"{milvus_provider!r} rerank provider calls the URL set in its milvus.yaml, not one "
        "from the Function's params. Set that URL in milvus.yaml and build the reranker "
        "without base_url, or rerank client-side with milvus_rerank.milvus.rerank_hits."
    )
