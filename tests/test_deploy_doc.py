"""``docs/deploy.md`` says what runs: its commands parse, its manifests agree, its code builds.

Every ``milvus-rerank`` command (shell lines, the systemd ``ExecStart``, the Kubernetes
``args``) parses with the CLI's own parser; the Kubernetes objects point at each other and
at ``/health``; the Python blocks build the Functions they say they build. The nginx block
runs in ``tests/app/serve/test_deploy_nginx.py``; the wire facts in
``tests/app/serve/test_milvus_conformance.py``.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml  # vcrpy's and transformers' dependency: always in the dev environment

from milvus_rerank.app.cli import make_parser
from milvus_rerank.app.serve.limits import ServeLimits

pytest.importorskip("pymilvus")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deploy.md"
_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)
#: ``--graceful-timeout``'s default (the drain after SIGTERM), from the one source of defaults.
GRACEFUL_DEFAULT_S = ServeLimits().graceful_timeout
#: What the page's servers bind: every IPv4 address, so the Milvus nodes reach them.
EVERY_ADDRESS = "0.0.0.0"  # noqa: S104


def blocks(language: str) -> list[str]:
    return [code for lang, code in _BLOCK.findall(DOC.read_text("utf-8")) if lang == language]


def serve_args(argv: list[str]) -> Any:
    """Parse ``serve ...`` as ``milvus-rerank`` would (argparse exits 2 on a bad flag)."""
    assert argv[0] == "serve", argv
    return make_parser().parse_args(argv)


def test_shell_commands_parse() -> None:
    commands = [
        shlex.split(line)
        for block in blocks("bash")
        for line in block.splitlines()
        if line.startswith("milvus-rerank ")
    ]
    assert commands, "the page shows how to start serve"
    for argv in commands:
        args = serve_args(argv[1:])
        assert args.host == EVERY_ADDRESS and args.port == 8000


def test_systemd_unit_runs_serve_and_outlasts_its_drain() -> None:
    (unit,) = blocks("ini")
    fields = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    argv = shlex.split(fields["ExecStart"])
    assert argv[0].endswith("/milvus-rerank")
    serve_args(argv[1:])
    assert int(fields["TimeoutStopSec"]) > GRACEFUL_DEFAULT_S


def manifests() -> dict[str, dict[str, Any]]:
    docs = [d for block in blocks("yaml") for d in yaml.safe_load_all(block) if "kind" in d]
    return {d["kind"]: d for d in docs}


def test_kubernetes_objects_agree() -> None:
    objects = manifests()
    deployment, service, scaler = objects["Deployment"], objects["Service"], objects["ScaledObject"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = serve_args(container["args"])
    (port,) = container["ports"]
    assert port["containerPort"] == args.port and args.host == EVERY_ADDRESS
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": port["name"]}
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["MILVUS_RERANK_API_KEY"]["valueFrom"]  # not in the manifest
    assert pod["spec"]["terminationGracePeriodSeconds"] > GRACEFUL_DEFAULT_S
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert scaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    query = scaler["spec"]["triggers"][0]["metadata"]["query"]
    assert "milvus_rerank_queue_pairs" in query and f'app="{labels["app"]}"' in query


def test_milvus_yaml_names_the_credential_the_functions_use() -> None:
    config = next(
        d for block in blocks("yaml") for d in yaml.safe_load_all(block) if "credential" in d
    )
    providers = config["function"]["rerank"]["model"]["providers"]
    assert providers["vllm"]["enable"] and providers["tei"]["enable"]
    names = set(config["credential"])
    used = set(re.findall(r'credential="(\w+)"|"credential": "(\w+)"', DOC.read_text("utf-8")))
    assert {n for pair in used for n in pair if n} == names


class RecordingClient:
    """Stands in for a ``MilvusClient``: keeps what ``search`` was given."""

    def __init__(self) -> None:
        self.searches: list[dict[str, Any]] = []

    def search(self, collection: str, **options: Any) -> list[list[dict[str, Any]]]:
        self.searches.append({"collection": collection, **options})
        return [[]]


def _promised_params(code: str) -> dict[str, Any]:
    """The dict a block's ``# ranker.params == {...}`` comment promises."""
    lines = [line.lstrip("# ") for line in code.splitlines() if line.startswith("# ")]
    text = " ".join(lines)
    return ast.literal_eval(text.split("ranker.params == ", 1)[1])


def test_python_blocks_build_the_functions_they_show() -> None:
    from pymilvus import Function, FunctionType

    built, by_hand = blocks("python")
    client = RecordingClient()
    namespace: dict[str, Any] = {"client": client, "query_vector": [0.1, 0.2]}
    exec(compile(built, "deploy.md", "exec"), namespace)  # noqa: S102
    ranker = namespace["ranker"]
    assert isinstance(ranker, Function) and ranker.type == FunctionType.RERANK
    assert ranker.params == _promised_params(built)
    assert client.searches[0]["ranker"] is ranker
    assert "text" in client.searches[0]["output_fields"]
    exec(compile(by_hand, "deploy.md", "exec"), namespace)  # noqa: S102
    assert namespace["ranker"].params["provider"] == "tei"


def test_the_tests_it_names_exist() -> None:
    for path in re.findall(r"`(tests/[\w/]+\.py)`", DOC.read_text("utf-8")):
        assert (ROOT / path).is_file(), path
