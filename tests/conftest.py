"""Shared fixtures: the hub stays offline, tiny random checkpoints are built once per session."""

from __future__ import annotations

import os

# The Hugging Face hub is unreachable on these machines: never let a test wait on it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from milvus_rerank import BGEReranker, CrossEncoderReranker, Reranker  # noqa: E402
from tests.fakes import FaultServer, api_reranker, fault_plan, fault_server  # noqa: E402
from tests.providers.api.specs import SPECS  # noqa: E402

__all__ = ["KINDS", "fault_plan", "fault_server", "make_reranker"]

CORPUS = [
    "paris is the capital of france",
    "berlin is the capital of germany",
    "the dartmouth conference in 1956 marked the birth of artificial intelligence",
    "alan turing proposed a test of machine intelligence",
    "milvus is a vector database for similarity search",
    "Unicode: café, naïve, 東京, emoji 🚀 and RTL שלום",
]


#: The four documents of pymilvus's rerankers example (the chunked cassettes rerank these).
PYMILVUS_DOCUMENTS = [
    (
        "In 1950, Alan Turing published his seminal paper, 'Computing Machinery and "
        "Intelligence,' proposing the Turing Test as a criterion of intelligence, a "
        "foundational concept in the philosophy and history of AI."
    ),
    (
        "The Dartmouth Conference in 1956 is considered the birthplace of artificial "
        "intelligence as a field; here, John McCarthy and others coined the term "
        "'artificial intelligence' and laid out its basic goals."
    ),
    (
        "In 1951, British mathematician and computer scientist Alan Turing also developed"
        " the first program designed to play chess, demonstrating an early example of AI "
        "in game strategy."
    ),
    (
        "The invention of the Logic Theorist by Allen Newell, Herbert A. Simon, and Cliff"
        " Shaw in 1955 marked the creation of the first true AI program, which was "
        "capable of solving logic problems, akin to proving mathematical theorems."
    ),
]


class ScoreTableReranker(Reranker):
    """A reranker whose scores come from a table: documents absent from it score 0."""

    provider = "table"

    def __init__(self, table: dict[str, float] | None = None) -> None:
        self.table = table or {}
        self.calls = 0

    def _score(self, query: str, documents: list[str]) -> Sequence[float]:
        self.calls += 1
        return [self.table.get(doc, 0.0) for doc in documents]


#: What the API rerankers read from the environment (keys, Cohere's CO_API_URL): a developer's
#: own values must not change where tests post or what they send; a test needing one sets it.
PROVIDER_ENV = (
    *("COHERE_API_KEY", "CO_API_KEY", "CO_API_URL", "VOYAGE_API_KEY", "JINA_API_KEY"),
    *("JINAAI_API_KEY", "MXBAI_API_KEY", "NVIDIA_API_KEY", "PINECONE_API_KEY"),
    *("SILICONFLOW_API_KEY", "DASHSCOPE_API_KEY", "VLLM_API_KEY"),
)


@pytest.fixture(autouse=True)
def _without_provider_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear ``PROVIDER_ENV`` for each test, unless cassettes are being re-recorded (real keys)."""
    if request.config.getoption("--record-mode", default="none") in ("none", None):
        for name in PROVIDER_ENV:
            monkeypatch.delenv(name, raising=False)


# The unit tier (`make test-fast`) is what remains after deselecting `slow`; this hook marks
# tests by what they need, so test files never have to remember the tier they belong to.
#: Marks that already say a test needs Milvus Lite or a live server (a module that runs
#: minutes of load or faults says ``pytestmark = pytest.mark.slow`` itself).
SLOW_MARKS = {"integration", "milvus_server", "vllm", "ray"}
#: Fixtures that build and run real (tiny) models or start loopback servers.
SLOW_FIXTURES = {
    "tiny_models",
    "onnx_models",
    "llm_dirs",
    "loopback",
    "live_vllm",
    "live_vllm_qwen3",
    "vllm_qwen3_dir",
}
#: A module that imports one of these starts servers in its tests.
SLOW_IMPORTS = {"BackgroundServer"}


def _is_slow(item: pytest.Item) -> bool:
    if any(item.get_closest_marker(name) is not None for name in SLOW_MARKS):
        return True
    if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    module = getattr(item, "module", None)
    return any(hasattr(module, name) for name in SLOW_IMPORTS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test outside the unit tier (see ``SLOW_*`` above)."""
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random checkpoints: two BERT cross-encoders and an XLM-R (BGE-shaped) reranker."""
    pytest.importorskip("torch")
    from transformers.utils import logging as hf_logging

    from milvus_rerank.providers.local.tiny import build_tiny_bge, build_tiny_cross_encoder

    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "ce": build_tiny_cross_encoder(root / "ce", texts=CORPUS, initializer_range=0.3),
        "ce_identity": build_tiny_cross_encoder(
            root / "ce-identity", texts=CORPUS, activation="identity", initializer_range=0.3
        ),
        "bge": build_tiny_bge(root / "bge", texts=CORPUS, initializer_range=0.3),
    }


@pytest.fixture(autouse=True, scope="session")
def _onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The ONNX backend's exports and int8 files go to a session folder, never ``~/.cache``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MILVUS_RERANK_CACHE", str(tmp_path_factory.mktemp("milvus-rerank-cache")))
        yield


@pytest.fixture(scope="session")
def onnx_models(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Copies of the tiny checkpoints that ship ``onnx/model.onnx`` (exported once, here)."""
    import shutil

    root = tmp_path_factory.mktemp("onnx-models")
    shipped = {}
    for name, cls in (("ce", CrossEncoderReranker), ("bge", BGEReranker)):
        with cls(str(tiny_models[name]), backend="onnx") as reranker:
            exported = reranker.runner.load().model.scorer.path
        shipped[name] = root / name
        shutil.copytree(tiny_models[name], shipped[name])
        (shipped[name] / "onnx").mkdir()
        shutil.copy(exported, shipped[name] / "onnx" / "model.onnx")
    return shipped


def _json_body(r1: object, r2: object) -> None:
    """vcrpy matcher: request bodies equal as JSON (key order and spacing do not matter)."""
    import json

    def parse(request: object) -> object:
        body = getattr(request, "body", None)
        if isinstance(body, bytes):
            body = body.decode("utf-8")
        try:
            return json.loads(body) if body else None
        except ValueError:
            return body

    assert parse(r1) == parse(r2), "request bodies differ"


def pytest_recording_configure(config: pytest.Config, vcr: object) -> None:
    vcr.register_matcher("json_body", _json_body)  # type: ignore[attr-defined]


LIVE_QUERY = "what is the capital of france"
LIVE_DOCUMENTS = [
    "berlin is in germany",
    "paris is the capital of france",
    "cat",
    "the capital of italy is rome",
    "france is a country in europe and its capital is paris",
]


def _vllm_python() -> str:
    python = os.environ.get("VLLM_PYTHON")
    if not python:
        pytest.skip("needs a live vLLM server: run `make test-vllm` (sets VLLM_PYTHON)")
    return python


@pytest.fixture(scope="session")
def live_vllm(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A real vLLM server (``make test-vllm``); the tests that need it skip without one."""
    python = _vllm_python()
    from milvus_rerank.app.demo import DEMO_QUERY, load_demo_corpus
    from tests.vllm_server import VLLMStartError, build_model, running_vllm

    root = tmp_path_factory.mktemp("vllm")
    texts = [*CORPUS, LIVE_QUERY, *LIVE_DOCUMENTS, DEMO_QUERY]
    texts += [doc["text"] for doc in load_demo_corpus()]
    model_dir = build_model(root / "tiny-ce", texts)
    try:
        with running_vllm(python, model_dir, root / "vllm.log") as server:
            yield server
    except VLLMStartError as exc:
        pytest.fail(str(exc), pytrace=False)


#: The words of the tiny Qwen3 reranker's vocabulary: rebuilding it from these (the offline
#: replay of cassettes/vllm/rerank_qwen3*.yaml does) gives the checkpoint the cassettes scored.
QWEN3_TEXTS = [*CORPUS, LIVE_QUERY, *LIVE_DOCUMENTS, *PYMILVUS_DOCUMENTS]
#: A task instruction other than the model card's, for the live and recorded Qwen3 calls.
QWEN3_INSTRUCTION = "Given a question about history, retrieve the passage that answers it"


@pytest.fixture(scope="session")
def vllm_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3-Reranker checkpoint the live Qwen3 server serves."""
    pytest.importorskip("torch")
    from tests.vllm_server import build_qwen3_model

    return build_qwen3_model(tmp_path_factory.mktemp("vllm-qwen3") / "tiny-qwen3", QWEN3_TEXTS)


@pytest.fixture(scope="session")
def live_vllm_qwen3(vllm_qwen3_dir: Path) -> object:
    """A second real vLLM server: the tiny Qwen3 checkpoint as Qwen3ForSequenceClassification."""
    python = _vllm_python()
    from tests.vllm_server import (
        QWEN3_MAX_MODEL_LEN,
        QWEN3_OVERRIDES,
        QWEN3_SERVED_NAME,
        VLLMStartError,
        running_vllm,
    )

    try:
        with running_vllm(
            python,
            vllm_qwen3_dir,
            vllm_qwen3_dir.parent / "vllm.log",
            served_name=QWEN3_SERVED_NAME,
            max_model_len=QWEN3_MAX_MODEL_LEN,
            hf_overrides=QWEN3_OVERRIDES,
        ) as server:
            yield server
    except VLLMStartError as exc:
        pytest.fail(str(exc), pytrace=False)


# -- every reranker kind, for the catalogue tests (bad inputs, load, adapter edges) ----------

#: Each kind the catalogue runs over: the local families, then every API spec.
KINDS = ["cross-encoder", "bge", *sorted(SPECS)]


@pytest.fixture(scope="session")
def make_reranker(
    tiny_models: dict[str, Path], fault_server: FaultServer
) -> Iterator[Callable[..., Reranker]]:
    """``make(kind)``: one shared instance per kind; ``make(kind, fresh=True)``: a new one."""
    cache: dict[str, Reranker] = {
        "cross-encoder": CrossEncoderReranker(str(tiny_models["ce"]), max_length=64),
        "bge": BGEReranker(str(tiny_models["bge"]), max_length=64),
    }

    def make(kind: str, fresh: bool = False) -> Reranker:
        if kind in cache and (not fresh or kind in ("cross-encoder", "bge")):
            return cache[kind]
        reranker = api_reranker(kind, fault_server.url)
        if not fresh:
            cache[kind] = reranker
        return reranker

    yield make
    for reranker in cache.values():
        reranker.close()
