"""The Ray Serve application's arguments: ``key=value`` strings (or a config's values), checked.

``serve run milvus_rerank.ray_serve:app_builder reranker=cross-encoder num_replicas=2`` hands
the builder a dict of strings; a ``serve deploy`` config may hold ints, floats, bools and
mappings. ``parse_ray_args`` reads either into one frozen ``RayServeOptions``, or raises a
``ConfigurationError`` naming the bad argument. It imports neither Ray nor torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from milvus_rerank.app.serve.limits import ServeLimits
from milvus_rerank.core.checks import describe_value
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.registry import PROVIDERS, provider_spec

__all__ = [
    "API_KEY_ENV",
    "CONNECTION_LIMITS",
    "DEFAULT_MAX_ONGOING_REQUESTS",
    "DRAIN_LIMITS",
    "LOCAL_ARGS",
    "RayServeOptions",
    "parse_ray_args",
]

#: The environment variable holding the server's key when ``api_key_env`` is not given (the
#: one ``milvus-rerank serve`` reads).
API_KEY_ENV = "MILVUS_RERANK_API_KEY"
#: Requests a replica takes at once (Ray's default is 5): enough that its batcher fills
#: forward passes from concurrent requests, as ``serve``'s does.
DEFAULT_MAX_ONGOING_REQUESTS = 64
#: ``serve``'s limits on connections: under Ray, connections are held by Ray's HTTP proxy.
CONNECTION_LIMITS = ("header_timeout", "max_connections")
#: ``serve``'s SIGTERM drain: under Ray, Ray stops replicas (``graceful_shutdown_timeout_s``).
DRAIN_LIMITS = ("graceful_timeout",)
#: Arguments only local rerankers take.
LOCAL_ARGS = ("device", "long_documents", "passage_overlap", "max_passages")
#: Model options (``milvus-rerank serve --instruction`` ...), passed on to the reranker's class.
_MODEL_OPTIONS = ("instruction", "normalize", "max_length", "dtype", "split_special_tokens")


@dataclass(frozen=True)
class RayServeOptions:
    """What a Ray Serve application of ``serve`` runs, read from its arguments.

    Attributes:
        reranker: The provider key (``"cross-encoder"``, ``"bge"``...), as ``--reranker``.
        model_name: The model name or a local directory, as ``--model``.
        device: A local reranker's torch device (None: CUDA when the replica has a GPU).
        base_url: An API reranker's server root, as ``--base-url``.
        key_env: The variable holding an API reranker's key, read inside each replica.
        long_documents: ``"truncate"`` or ``"max_passage"`` (local rerankers).
        passage_overlap: Tokens neighbouring windows share (``max_passage``).
        max_passages: Windows scored per document at most (``max_passage``).
        options: Model options (``instruction``, ``normalize``, ``max_length``, ``dtype``,
            ``split_special_tokens``).
        served_model_name: The name answers carry, as ``--served-model-name``.
        api_key_env: The variable holding the key every rerank route needs, read inside each
            replica (never a Ray argument: Ray records those).
        api_key_required: Whether ``api_key_env`` was named (then it must be set).
        allowed_hosts: ``Host`` names answered besides localhost and IP addresses.
        limits: ``ServeLimits`` fields given, by name.
        name: The deployment's name.
        num_replicas: Replicas (None: Ray's default, or ``autoscaling_config``).
        autoscaling_config: Ray's autoscaling config (mutually exclusive with ``num_replicas``).
        num_cpus: CPUs each replica reserves (Ray also sets its threads from it).
        num_gpus: GPUs each replica reserves.
        max_ongoing_requests: Requests a replica takes at once.
        max_queued_requests: Requests waiting for a replica before Ray answers 503 (None:
            Ray's default, no bound).
        graceful_shutdown_timeout_s: Seconds a stopping replica's requests may take to finish.
    """

    reranker: str
    model_name: str | None = None
    device: str | None = None
    base_url: str | None = None
    key_env: str | None = None
    long_documents: str | None = None
    passage_overlap: int | None = None
    max_passages: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    served_model_name: str | None = None
    api_key_env: str = API_KEY_ENV
    api_key_required: bool = False
    allowed_hosts: tuple[str, ...] | None = None
    limits: Mapping[str, Any] = field(default_factory=dict)
    name: str = "MilvusRerank"
    num_replicas: int | None = None
    autoscaling_config: Mapping[str, Any] | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS
    max_queued_requests: int | None = None
    graceful_shutdown_timeout_s: float | None = None

    def serve_limits(self) -> ServeLimits:
        """The replica app's ``ServeLimits`` (its checks raise ``ConfigurationError``)."""
        return ServeLimits(**self.limits)

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of Ray's ``Deployment.options`` (none of them secret)."""
        actor: dict[str, Any] = {}
        if self.num_cpus is not None:
            actor["num_cpus"] = self.num_cpus
        if self.num_gpus is not None:
            actor["num_gpus"] = self.num_gpus
        chosen: dict[str, Any] = {
            "name": self.name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": actor,
        }
        if self.num_replicas is not None:
            chosen["num_replicas"] = self.num_replicas
        if self.autoscaling_config is not None:
            chosen["autoscaling_config"] = dict(self.autoscaling_config)
        if self.max_queued_requests is not None:
            chosen["max_queued_requests"] = self.max_queued_requests
        if self.graceful_shutdown_timeout_s is not None:
            chosen["graceful_shutdown_timeout_s"] = self.graceful_shutdown_timeout_s
        return chosen


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} must be a non-empty string, got {describe_value(value)}")
    return value.strip()


def _integer(name: str, value: object, minimum: int) -> int:
    number: object = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = value
    if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
        raise ConfigurationError(
            f"{name} must be an integer >= {minimum}, got {describe_value(value)}"
        )
    return number


#: The most replicas one application may ask for: a typo's million would wedge Ray's
#: controller (measured: 13 GB and a hung ``serve run``), and no reranker fleet needs more.
MAX_REPLICAS = 1024


def _replicas(name: str, count: int) -> int:
    if count > MAX_REPLICAS:
        raise ConfigurationError(
            f"{name} must be at most {MAX_REPLICAS} (replicas of one application), got {count}"
        )
    return count


def _real(name: str, value: object, minimum: float = 0.0, *, above: bool = False) -> float:
    number: object = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = value
    ok = not isinstance(number, bool) and isinstance(number, (int, float))
    if ok and math.isfinite(number) and (number > minimum if above else number >= minimum):  # type: ignore[arg-type, operator]
        return float(number)  # type: ignore[arg-type]
    bound = f"above {minimum:g}" if above else f">= {minimum:g}"
    raise ConfigurationError(f"{name} must be a number {bound}, got {describe_value(value)}")


def _flag(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {describe_value(value)}")


def _mapping(name: str, value: object) -> dict[str, Any]:
    parsed: object = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ConfigurationError(f"{name} must be a JSON object: {exc}") from None
    if not isinstance(parsed, Mapping):
        raise ConfigurationError(f"{name} must be a JSON object, got {describe_value(value)}")
    return dict(parsed)


def _hosts(name: str, value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ConfigurationError(
            f"{name} must be comma-separated names, got {describe_value(value)}"
        )
    names = tuple(item.strip() for item in items if item.strip())
    if not names:
        raise ConfigurationError(f"{name} must name at least one host, got {value!r}")
    return names


def _limit_reader(kind: str) -> Callable[[str, object], Any]:
    """How a ``ServeLimits`` field is read: an int, or a number (milliseconds may be 0)."""
    if "int" in kind:
        return lambda name, value: _integer(name, value, 1)
    return lambda name, value: _real(name, value, 0.0)


#: ``ServeLimits`` fields a replica app takes (the connection limits are Ray's proxy's).
_LIMITS = {
    f.name: _limit_reader(str(f.type))
    for f in dataclasses.fields(ServeLimits)
    if f.name not in CONNECTION_LIMITS and f.name not in DRAIN_LIMITS
}

#: Every other argument and how it is read (``reranker`` and ``api_key`` apart).
_READERS: dict[str, Callable[[str, object], Any]] = {
    "model_name": _text,
    "device": _text,
    "base_url": _text,
    "key_env": _text,
    "long_documents": _text,
    "passage_overlap": lambda name, value: _integer(name, value, 0),
    "max_passages": lambda name, value: _integer(name, value, 1),
    "served_model_name": _text,
    "api_key_env": _text,
    "allowed_hosts": _hosts,
    "name": _text,
    "num_replicas": lambda name, value: _replicas(name, _integer(name, value, 1)),
    "autoscaling_config": _mapping,
    "num_cpus": _real,
    "num_gpus": _real,
    "max_ongoing_requests": lambda name, value: _integer(name, value, 1),
    "max_queued_requests": lambda name, value: _integer(name, value, 1),
    "graceful_shutdown_timeout_s": lambda name, value: _real(name, value, above=True),
    "instruction": _text,
    "normalize": _flag,
    "max_length": lambda name, value: _integer(name, value, 1),
    "dtype": _text,
    "split_special_tokens": _flag,
}


def _refuse(name: str) -> ConfigurationError:
    """The error for an argument the application does not take, with what it may have meant."""
    if name == "api_key":
        return ConfigurationError(
            "api_key: Ray records an application's arguments (serve config, the dashboard); "
            "set the key in an environment variable of every Ray node and pass its name as "
            f"api_key_env (default: {API_KEY_ENV})"
        )
    if name in DRAIN_LIMITS:
        return ConfigurationError(
            f"{name}: under Ray, Ray stops the replicas and gives their requests "
            "graceful_shutdown_timeout_s to finish; pass that instead"
        )
    if name in CONNECTION_LIMITS:
        return ConfigurationError(
            f"{name}: under Ray, connections are held by Ray's HTTP proxy, not by the "
            "replicas; set Ray Serve's http_options instead"
        )
    known = sorted({"reranker", *_READERS, *_LIMITS})
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigurationError(f"unknown argument {name!r}{hint}; known: {', '.join(known)}")


def parse_ray_args(args: Mapping[str, object]) -> RayServeOptions:
    """``RayServeOptions`` from the builder's arguments (``serve run ... key=value``).

    Raises:
        ConfigurationError: a missing or unknown ``reranker``, an unknown argument (or
            ``api_key``, or a connection limit), a value of the wrong kind, a local
            reranker's argument for an API reranker or the other way round, both
            ``num_replicas`` and ``autoscaling_config``, or a limit ``ServeLimits`` refuses.
    """
    if not isinstance(args, Mapping):
        raise ConfigurationError(f"the arguments must be a mapping, got {describe_value(args)}")
    if "reranker" not in args:
        raise ConfigurationError(f"reranker is required: one of {', '.join(sorted(PROVIDERS))}")
    provider = _text("reranker", args["reranker"])
    spec = provider_spec(provider)
    read: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for name, value in args.items():
        if name == "reranker":
            continue
        if not isinstance(name, str) or (name not in _READERS and name not in _LIMITS):
            raise _refuse(str(name))
        if name in _LIMITS:
            limits[name] = _LIMITS[name](name, value)
        elif name in _MODEL_OPTIONS:
            options[name] = _READERS[name](name, value)
        else:
            read[name] = _READERS[name](name, value)
    _check_kind(provider, spec.kind, read)
    scaling = read.get("autoscaling_config") or {}
    for bound in ("min_replicas", "initial_replicas", "max_replicas"):
        if isinstance(scaling.get(bound), int):
            _replicas(f"autoscaling_config's {bound}", scaling[bound])
    if "num_replicas" in read and "autoscaling_config" in read:
        raise ConfigurationError(
            "num_replicas and autoscaling_config exclude each other: autoscaling sets the "
            "replicas between its min_replicas and max_replicas"
        )
    parsed = RayServeOptions(
        reranker=provider,
        options=options,
        limits=limits,
        api_key_required="api_key_env" in read,
        **read,
    )
    parsed.serve_limits()  # a limit ServeLimits refuses fails here, in the driver
    return parsed


def _check_kind(provider: str, kind: str, read: Mapping[str, Any]) -> None:
    """Refuse a local reranker's argument for an API one, and an API one's for a local one."""
    if kind == "local":
        for name in ("base_url", "key_env"):
            if name in read:
                raise ConfigurationError(
                    f"{name} is for API rerankers; {provider!r} runs a local model"
                )
        return
    for name in LOCAL_ARGS:
        if name in read:
            raise ConfigurationError(f"{name} is for local rerankers; {provider!r} calls an API")
