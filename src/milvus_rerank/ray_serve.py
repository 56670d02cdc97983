"""Ray Serve: ``app_builder`` runs ``milvus-rerank serve``'s app on Ray replicas.

``serve run milvus_rerank.ray_serve:app_builder reranker=cross-encoder model_name=DIR
num_replicas=2``: each replica loads its own model and serves the app ``create_app`` builds
(routes, formats, limits, auth, batching), so Ray adds replicas, autoscaling and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from milvus_rerank.app.ray_options import RayServeOptions, parse_ray_args
from milvus_rerank.app.serve.access import check_api_key
from milvus_rerank.core.base import Reranker
from milvus_rerank.core.errors import ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    from ray.serve import Application

    from milvus_rerank.app.serve.state import ServeState

__all__ = [
    "MIRROR_PERIOD",
    "REPLICA_HEADER",
    "MetricsMirror",
    "RerankReplica",
    "app_builder",
    "replica_api_key",
]

#: The response header naming the replica that answered (Ray's replica tag).
REPLICA_HEADER = "x-replica-id"
#: Seconds between two copies of a replica's metrics into Ray's (Ray reports every few).
MIRROR_PERIOD = 5.0
#: The app's metrics copied into Ray's (its process metrics are Ray's own already).
_MIRRORED_PREFIX = "milvus_rerank_"
#: Labels renamed on the way into Ray's metrics (Ray Serve owns ``route``).
_RAY_NAMES = {"route": "path"}


def _key_from(variable: str, required: bool, what: str) -> str | None:
    """The value of ``variable`` (blank: None), or a ``ConfigurationError`` if ``required``."""
    value = os.environ.get(variable, "")
    if value.strip():
        return value
    if required:
        raise ConfigurationError(
            f"{what} names the environment variable {variable}, which is not set or blank "
            "in this replica: set it in the environment of every Ray node"
        )
    return None


def replica_api_key(options: RayServeOptions) -> str | None:
    """The key every rerank route needs, read from ``options.api_key_env`` in this process.

    Raises:
        ConfigurationError: ``api_key_env`` was named but is not set, or holds no usable key
            (the message never shows it).
    """
    key = _key_from(options.api_key_env, options.api_key_required, "api_key_env")
    source = f"the environment variable {options.api_key_env}"
    return check_api_key(key, source) if key is not None else None


class _ReplicaHeader:
    """ASGI middleware: every HTTP answer names the replica that gave it."""

    def __init__(self, app: Any, tag: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), tag.encode("ascii", "replace"))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_tagged)


class MetricsMirror:
    """Copies one app's ``milvus_rerank_*`` samples into Ray's metrics, as gauges.

    Each replica's ``/metrics`` is its own, and Ray's proxy picks a replica per scrape; Ray's
    node exporters do reach every replica, so the samples go there too, with Ray's
    ``application``, ``deployment`` and ``replica`` labels added (Ray exports them as
    ``ray_milvus_rerank_*``). Counters and histogram series keep their cumulative values, so
    ``rate()`` and ``histogram_quantile()`` read them as they read the app's own.
    """

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._gauges: dict[tuple[str, tuple[str, ...]], Any] = {}

    def copy(self) -> int:
        """Copy every sample once; returns how many were copied."""
        families = list(self.registry.collect())
        from ray.serve.metrics import Gauge

        copied = 0
        for family in families:
            for sample in family.samples:
                if not sample.name.startswith(_MIRRORED_PREFIX) or sample.name.endswith("_created"):
                    continue
                # Ray Serve fills a "route" tag with the request's route: renamed, kept.
                labels = {_RAY_NAMES.get(k, k): v for k, v in sample.labels.items()}
                keys = tuple(sorted(labels))
                gauge = self._gauges.get((sample.name, keys))
                if gauge is None:
                    gauge = Gauge(sample.name, description=family.documentation, tag_keys=keys)
                    self._gauges[(sample.name, keys)] = gauge
                gauge.set(sample.value, tags=labels or None)
                copied += 1
        return copied

    async def run(self, period: float = MIRROR_PERIOD) -> None:
        """Copy every ``period`` seconds until cancelled; a failed copy is logged once."""
        failed = False
        while True:
            try:
                self.copy()
            except Exception:  # the replica serves on; only Ray's copy of its metrics lags
                if not failed:
                    logging.getLogger("milvus_rerank.serve").exception(
                        "copying the metrics into Ray's failed; /metrics still serves them"
                    )
                failed = True
            await asyncio.sleep(period)


class RerankReplica:
    """One replica: its reranker, loaded in this process, behind ``serve``'s app.

    Ray builds it from ``RayServeOptions`` (no key among them), then asks it for its ASGI app
    (``__serve_build_asgi_app__``): the model loads in a worker thread, so the replica's
    event loop stays free for Ray's own calls meanwhile.
    """

    def __init__(self, options: RayServeOptions) -> None:
        self.options = options
        self._stack = contextlib.ExitStack()
        self._state: ServeState | None = None
        self._mirror: asyncio.Task[None] | None = None

    def _open(self) -> Reranker:
        from milvus_rerank.app.commands import open_reranker

        opts = self.options
        upstream = None
        if opts.key_env is not None:
            upstream = _key_from(opts.key_env, True, "key_env")
        reranker, _ = self._stack.enter_context(
            open_reranker(
                opts.reranker,
                model_name=opts.model_name,
                base_url=opts.base_url,
                api_key=upstream,
                device=opts.device,
                long_documents=opts.long_documents,
                passage_overlap=opts.passage_overlap,
                max_passages=opts.max_passages,
                options=opts.options,
            )
        )
        return reranker

    async def __serve_build_asgi_app__(self) -> Any:
        """Load the reranker and build ``create_app``'s app over it (Ray calls it once)."""
        from ray import serve

        from milvus_rerank.app.serve.app import create_app

        opts = self.options
        api_key = replica_api_key(opts)  # before the model loads: a bad key fails at once
        reranker = await asyncio.to_thread(self._open)
        app = create_app(
            reranker,
            model_name=opts.served_model_name,
            api_key=api_key,
            allowed_hosts=opts.allowed_hosts,
            limits=opts.serve_limits(),
        )
        app.add_middleware(_ReplicaHeader, tag=serve.get_replica_context().replica_tag)
        self._state = app.state.serve
        mirror = MetricsMirror(self._state.metrics.registry)
        self._mirror = asyncio.get_running_loop().create_task(mirror.run())
        return app

    def check_health(self) -> None:
        """Ray's health check: fails while requests wait on scoring that makes no progress.

        Raises:
            RuntimeError: the app's ``/health`` would say ``stalled`` (Ray then replaces
                this replica).
        """
        state = self._state
        if state is None:
            return
        stalled = state.batcher.stalled_for()
        if stalled > state.limits.stall_after:
            raise RuntimeError(f"scoring made no progress for {stalled:.0f} s")

    def __del__(self) -> None:
        if self._mirror is not None:
            self._mirror.cancel()
        self._stack.close()


def app_builder(args: Mapping[str, Any]) -> Application:
    """Ray Serve's application builder: ``serve run milvus_rerank.ray_serve:app_builder k=v``.

    The arguments mirror ``milvus-rerank serve``'s options (``reranker``, ``model_name``,
    ``device``, ``base_url``, ``key_env``, the long-document and model options,
    ``served_model_name``, ``allowed_hosts``, the limits) plus Ray's: ``num_replicas`` or
    ``autoscaling_config`` (JSON), ``num_cpus``, ``num_gpus``, ``max_ongoing_requests``,
    ``max_queued_requests``, ``graceful_shutdown_timeout_s``, ``name``. The key is never an
    argument (Ray records those): ``api_key_env`` names the variable each replica reads it
    from. docs/deploy.md, "Ray cluster".

    Raises:
        ConfigurationError: a bad argument (``parse_ray_args``), checked here in the driver
            before any replica starts.
        MissingDependencyError: Ray Serve is not installed.
    """
    options = parse_ray_args(args)
    try:
        from ray import serve
    except ImportError as exc:
        raise MissingDependencyError("The Ray Serve application", "ray", "ray[serve]") from exc
    deployment = serve.deployment(serve.ingress()(RerankReplica))
    return deployment.options(**options.deployment_options()).bind(options)
