"""``parse_ray_args``: the Ray Serve application's ``key=value`` arguments, read and checked.

No Ray here: the arguments are read in the driver before any replica starts, and every bad
one is a ``ConfigurationError`` naming it (the unit tier).
"""

from __future__ import annotations

from typing import Any

import pytest

from milvus_rerank.app.ray_options import (
    API_KEY_ENV,
    DEFAULT_MAX_ONGOING_REQUESTS,
    RayServeOptions,
    parse_ray_args,
)
from milvus_rerank.app.serve.limits import ServeLimits
from milvus_rerank.core.errors import ConfigurationError

CE = {"reranker": "cross-encoder"}


def test_strings_from_the_command_line_are_read_into_their_kinds() -> None:
    options = parse_ray_args(
        {
            **CE,
            "model_name": "/models/x",
            "device": "cuda",
            "num_replicas": "2",
            "num_cpus": "1",
            "num_gpus": "0.5",
            "max_documents": "50",
            "max_wait_ms": "0",
            "normalize": "false",
            "max_length": "256",
            "allowed_hosts": "rerank.internal, other.internal",
            "graceful_shutdown_timeout_s": "30",
            "max_queued_requests": "100",
        }
    )
    assert options.model_name == "/models/x" and options.device == "cuda"
    assert options.options == {"normalize": False, "max_length": 256}
    assert options.allowed_hosts == ("rerank.internal", "other.internal")
    assert options.serve_limits() == ServeLimits(max_documents=50, max_wait_ms=0.0)
    assert options.deployment_options() == {
        "name": "MilvusRerank",
        "max_ongoing_requests": DEFAULT_MAX_ONGOING_REQUESTS,
        "ray_actor_options": {"num_cpus": 1.0, "num_gpus": 0.5},
        "num_replicas": 2,
        "graceful_shutdown_timeout_s": 30.0,
        "max_queued_requests": 100,
    }


def test_a_configs_native_values_are_taken_as_they_are() -> None:
    scaling = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    options = parse_ray_args({**CE, "autoscaling_config": scaling, "split_special_tokens": True})
    assert options.deployment_options()["autoscaling_config"] == scaling
    assert "num_replicas" not in options.deployment_options()
    assert options.options == {"split_special_tokens": True}
    as_json = parse_ray_args({**CE, "autoscaling_config": '{"min_replicas": 1}'})
    assert as_json.autoscaling_config == {"min_replicas": 1}


def test_the_key_is_read_from_a_variable_named_never_given() -> None:
    assert parse_ray_args(CE) == RayServeOptions(reranker="cross-encoder")
    assert parse_ray_args(CE).api_key_env == API_KEY_ENV
    assert not parse_ray_args(CE).api_key_required
    named = parse_ray_args({**CE, "api_key_env": "RERANK_KEY"})
    assert named.api_key_env == "RERANK_KEY" and named.api_key_required
    secret = "sk-secret-0123456789"
    with pytest.raises(ConfigurationError, match="api_key_env") as info:
        parse_ray_args({**CE, "api_key": secret})
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "reranker is required"),
        ({"reranker": "nope"}, "unknown reranker provider 'nope'"),
        ({**CE, "num_replica": "2"}, "did you mean 'num_replicas'"),
        ({**CE, "num_replicas": "two"}, "num_replicas must be an integer >= 1, got str 'two'"),
        ({**CE, "num_replicas": "0"}, "num_replicas must be an integer >= 1"),
        ({**CE, "num_replicas": "1000000"}, "num_replicas must be at most 1024.*1000000"),
        (
            {**CE, "autoscaling_config": '{"min_replicas": 1, "max_replicas": 100000}'},
            "autoscaling_config's max_replicas must be at most 1024",
        ),
        ({**CE, "num_cpus": "-1"}, "num_cpus must be a number >= 0"),
        ({**CE, "num_gpus": "nan"}, "num_gpus must be a number >= 0"),
        ({**CE, "max_documents": "1.5"}, "max_documents must be an integer >= 1"),
        ({**CE, "max_wait_ms": "5000"}, "max_wait_ms must be milliseconds from 0 to 1,000"),
        ({**CE, "normalize": "maybe"}, "normalize must be true or false"),
        ({**CE, "autoscaling_config": "{"}, "autoscaling_config must be a JSON object"),
        ({**CE, "autoscaling_config": "[1]"}, "autoscaling_config must be a JSON object"),
        ({**CE, "num_replicas": "2", "autoscaling_config": "{}"}, "exclude each other"),
        ({**CE, "header_timeout": "5"}, "header_timeout: under Ray, connections"),
        ({**CE, "max_connections": "5"}, "max_connections: under Ray, connections"),
        ({**CE, "graceful_timeout": "5"}, "graceful_timeout: .* graceful_shutdown_timeout_s"),
        ({**CE, "base_url": "http://x"}, "base_url is for API rerankers"),
        ({"reranker": "cohere", "device": "cpu"}, "device is for local rerankers"),
        ({**CE, "model_name": "  "}, "model_name must be a non-empty string"),
        ({**CE, "allowed_hosts": ","}, "allowed_hosts must name at least one host"),
        ({**CE, "graceful_shutdown_timeout_s": "0"}, "must be a number above 0"),
    ],
)
def test_a_bad_argument_is_refused_by_name(args: dict[str, Any], message: str) -> None:
    pattern = message if ".*" in message else message.replace("(", r"\(").replace(".", r"\.")
    with pytest.raises(ConfigurationError, match=pattern):
        parse_ray_args(args)


def test_the_builder_refuses_in_the_driver_before_ray_is_needed() -> None:
    from milvus_rerank.ray_serve import app_builder

    with pytest.raises(ConfigurationError, match="unknown argument 'replicas'"):
        app_builder({**CE, "replicas": "2"})


def test_a_replica_reads_its_key_from_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from milvus_rerank.ray_serve import replica_api_key

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert replica_api_key(parse_ray_args(CE)) is None  # the default variable unset: no key
    monkeypatch.setenv(API_KEY_ENV, "default-key-0123")
    assert replica_api_key(parse_ray_args(CE)) == "default-key-0123"
    named = parse_ray_args({**CE, "api_key_env": "RERANK_KEY"})
    monkeypatch.delenv("RERANK_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="RERANK_KEY, which is not set"):
        replica_api_key(named)
    monkeypatch.setenv("RERANK_KEY", "k3y")
    with pytest.raises(ConfigurationError, match="RERANK_KEY") as info:
        replica_api_key(named)
    assert "k3y" not in str(info.value)


def _ray_pages() -> list[str]:
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    return [(docs / "deploy.md").read_text("utf-8")]


def test_the_deploy_pages_ray_arguments_parse() -> None:
    import re
    import shlex

    yaml = pytest.importorskip("yaml")
    found = 0
    for text in _ray_pages():
        for lang, code in re.findall(r"```(\w+)\n(.*?)```", text, re.DOTALL):
            if lang == "bash":
                for line in code.replace("\\\n", " ").splitlines():
                    words = shlex.split(line, comments=True)
                    if "milvus_rerank.ray_serve:app_builder" in words:
                        rest = words[words.index("milvus_rerank.ray_serve:app_builder") + 1 :]
                        parse_ray_args(dict(word.split("=", 1) for word in rest))
                        found += 1
            elif lang == "yaml" and "milvus_rerank.ray_serve:app_builder" in code:
                for app in yaml.safe_load(code)["applications"]:
                    assert app["import_path"] == "milvus_rerank.ray_serve:app_builder"
                    assert app.get("route_prefix", "/") == "/"  # Milvus posts to /rerank
                    parse_ray_args(app["args"])
                    found += 1
    assert found >= 2


async def test_the_metrics_mirror_logs_a_failed_copy_once_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    from milvus_rerank.ray_serve import MetricsMirror

    class Broken:
        calls = 0

        def collect(self) -> list[object]:
            Broken.calls += 1
            raise RuntimeError("no registry")

    task = asyncio.ensure_future(MetricsMirror(Broken()).run(period=0.001))
    for _ in range(5_000):  # bounded: a mirror that never reaches collect() fails, not hangs
        if Broken.calls >= 3:
            break
        await asyncio.sleep(0.001)
    assert Broken.calls >= 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    logged = [r for r in caplog.records if "copying the metrics into Ray's failed" in r.message]
    assert len(logged) == 1


def test_rays_health_check_fails_while_scoring_is_stalled() -> None:
    from types import SimpleNamespace

    from milvus_rerank.ray_serve import RerankReplica

    replica = RerankReplica(parse_ray_args(CE))
    replica.check_health()  # before its app is built: healthy (Ray waits for the load)
    stalled = {"for": 0.0}
    batcher = SimpleNamespace(stalled_for=lambda: stalled["for"])
    replica._state = SimpleNamespace(batcher=batcher, limits=ServeLimits(stall_after=60.0))  # type: ignore[assignment]
    replica.check_health()
    stalled["for"] = 61.0
    with pytest.raises(RuntimeError, match="no progress for 61 s"):
        replica.check_health()
