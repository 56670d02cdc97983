"""``backend="onnx"``: parity with torch, where its file comes from, int8, bad files, callers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")

from milvus_rerank import BGEReranker, CrossEncoderReranker  # noqa: E402
from milvus_rerank.core.errors import ConfigurationError  # noqa: E402
from milvus_rerank.providers.local import onnx_export, onnx_files  # noqa: E402
from milvus_rerank.providers.local.onnx_files import is_quantized, read_graph  # noqa: E402
from tests.conftest import CORPUS  # noqa: E402

QUERY = "what is the capital of france"
LONG = " ".join(CORPUS * 12)  # past max_length=64: several windows
DOCS = [*CORPUS, LONG, "", "capital " * 40]
TOLERANCE = 1e-4


def scores(reranker: Any, query: str = QUERY, docs: list[str] = DOCS) -> list[float]:
    return list(reranker.score_pairs([query] * len(docs), docs))


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(values: list[float]) -> list[int]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0] * len(values)
        for rank, i in enumerate(order):
            out[i] = rank
        return out

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb, strict=True)) / (n * (n * n - 1))


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Each folder ``export_graph`` writes (a test counts the exports it caused)."""
    calls: list[Path] = []
    real = onnx_export.export_graph

    def counted(loaded: Any, folder: Path) -> None:
        calls.append(folder)
        real(loaded, folder)

    monkeypatch.setattr(onnx_export, "export_graph", counted)
    return calls


CASES = [
    ("ce", CrossEncoderReranker, {}),
    ("ce_identity", CrossEncoderReranker, {}),
    ("ce", CrossEncoderReranker, {"activation": "identity"}),
    ("bge", BGEReranker, {}),
    ("bge", BGEReranker, {"normalize": False, "query_max_length": 8}),
    ("ce", CrossEncoderReranker, {"long_documents": "max_passage", "max_passages": 4}),
    ("bge", BGEReranker, {"long_documents": "max_passage", "passage_overlap": 8}),
]


@pytest.mark.parametrize(("name", "cls", "options"), CASES)
def test_fp32_scores_and_usage_equal_torch(
    tiny_models: dict[str, Path], name: str, cls: Any, options: dict[str, Any]
) -> None:
    path = str(tiny_models[name])
    with (
        cls(path, max_length=64, **options) as torch_r,
        cls(path, max_length=64, backend="onnx", **options) as onnx_r,
    ):
        expected, got = scores(torch_r), scores(onnx_r)
        assert max(abs(a - b) for a, b in zip(expected, got, strict=True)) < TOLERANCE
        assert (
            onnx_r.rerank_response(QUERY, DOCS).usage == torch_r.rerank_response(QUERY, DOCS).usage
        )
        assert [r.index for r in onnx_r.rerank(QUERY, DOCS[:6])] == [
            r.index for r in torch_r.rerank(QUERY, DOCS[:6])
        ]
        assert onnx_r.device == "cpu" and onnx_r.runner.load().backend == "onnx"
        assert "backend='onnx'" in repr(onnx_r)


@pytest.mark.parametrize("name", ["ce", "bge"])
def test_fp32_equals_torch_at_batch_one_and_near_max_length(
    tiny_models: dict[str, Path], name: str
) -> None:
    """The exported graph holds no shape of its sample batch: one row, and rows of ~max_length."""
    cls = CrossEncoderReranker if name == "ce" else BGEReranker
    path = str(tiny_models[name])
    near = [
        " ".join(["capital"] * words) for words in (49, 52, 53, 54, 60)
    ]  # 58 to 64 tokens, cut at 64
    with cls(path, max_length=64) as torch_r, cls(path, max_length=64, backend="onnx") as onnx_r:
        for docs in (["paris"], [LONG], [near[2]], near, [LONG, "rome"]):
            expected = torch_r.score_pairs([QUERY] * len(docs), docs)
            got = onnx_r.score_pairs([QUERY] * len(docs), docs)
            assert max(abs(a - b) for a, b in zip(expected, got, strict=True)) < TOLERANCE, docs


def test_shipped_file_is_used_as_is_and_needs_no_export(
    onnx_models: dict[str, Path], tiny_models: dict[str, Path], exports: list[Path]
) -> None:
    before = sorted(p.name for p in onnx_models["ce"].rglob("*"))
    with CrossEncoderReranker(str(onnx_models["ce"]), backend="onnx") as shipped:
        loaded = shipped.runner.load()
        assert loaded.model.scorer.path == onnx_models["ce"] / "onnx" / "model.onnx"
        assert not loaded.model.exported
        with CrossEncoderReranker(str(tiny_models["ce"])) as torch_r:
            pairs = zip(scores(shipped), scores(torch_r), strict=True)
            assert max(abs(a - b) for a, b in pairs) < TOLERANCE
    assert exports == []
    assert sorted(p.name for p in onnx_models["ce"].rglob("*")) == before


def test_onnx_file_picks_another_file_of_the_model(
    onnx_models: dict[str, Path], tmp_path: Path, exports: list[Path]
) -> None:
    model = tmp_path / "ce"
    shutil.copytree(onnx_models["ce"], model)
    with CrossEncoderReranker(str(model), backend="onnx", quantization="int8") as q:
        int8 = q.runner.load().model.scorer.path
    exports.clear()
    shutil.copy(int8, model / "onnx" / "model_qint8_avx512_vnni.onnx")
    (model / "onnx" / "model.onnx").write_bytes(b"not used")  # onnx_file wins over it
    picked = CrossEncoderReranker(
        str(model), backend="onnx", onnx_file="onnx/model_qint8_avx512_vnni.onnx"
    )
    with picked:
        loaded = picked.runner.load()
        assert loaded.model.scorer.path == model / "onnx" / "model_qint8_avx512_vnni.onnx"
        assert loaded.dtype == "int8"  # a pre-quantized file: used as it is
        assert len(scores(picked)) == len(DOCS)
    assert exports == []


def test_export_is_cached_and_reused_never_written_into_the_model(
    tiny_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exports: list[Path],
) -> None:
    monkeypatch.setenv(onnx_files.CACHE_ENV, str(tmp_path / "cache"))
    before = sorted(p.name for p in tiny_models["bge"].rglob("*"))
    first = BGEReranker(str(tiny_models["bge"]), backend="onnx")
    expected = scores(first)
    assert len(exports) == 1
    path = first.runner.load().model.scorer.path
    assert path.is_relative_to(tmp_path / "cache" / "onnx") and first.runner.load().model.exported
    first.close()
    with BGEReranker(str(tiny_models["bge"]), backend="onnx") as second:
        assert scores(second) == expected
        assert second.runner.load().model.scorer.path == path
    assert len(exports) == 1  # the second load read the cache
    assert sorted(p.name for p in tiny_models["bge"].rglob("*")) == before
    leftovers = [p.name for p in (tmp_path / "cache" / "onnx").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the temporary build folder was renamed into place


def test_int8_is_cached_quantized_and_ranks_like_fp32(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(onnx_files.CACHE_ENV, str(tmp_path / "cache"))
    docs = [*CORPUS, *(f"{a} {b}" for a in CORPUS[:4] for b in CORPUS[2:5])]
    path = str(tiny_models["ce_identity"])
    with (
        CrossEncoderReranker(path, backend="onnx") as fp32,
        CrossEncoderReranker(path, backend="onnx", quantization="int8") as int8,
    ):
        loaded = int8.runner.load()
        assert loaded.dtype == "int8" and is_quantized(read_graph(loaded.model.scorer.path))
        assert (
            loaded.model.scorer.path.stat().st_size
            < fp32.runner.load().model.scorer.path.stat().st_size
        )
        a, b = scores(fp32, docs=docs), scores(int8, docs=docs)
        assert a != b  # quantized: the scores move
        assert spearman(a, b) > 0.9
        assert "quantization='int8'" in repr(int8)
    with CrossEncoderReranker(path, backend="onnx", quantization="int8") as again:
        assert again.runner.load().model.scorer.path == loaded.model.scorer.path


def _graph_with_inputs(path: Path, names: list[str]) -> Path:
    """A valid ONNX graph taking ``names`` (float) and returning their sum: no reranker's."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "l"]) for n in names]
    out = helper.make_tensor_value_info("logits", TensorProto.INT64, ["b", "l"])
    node = helper.make_node("Identity", [names[0]], ["logits"])
    graph = helper.make_graph([node], "not-a-reranker", inputs, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _bad_files(onnx_models: dict[str, Path], model: Path) -> dict[str, tuple[Path, str]]:
    onnx_dir = model / "onnx"
    garbage = onnx_dir / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 certainly not protobuf" * 10)
    other = onnx_dir / "other.onnx"
    shutil.copy(onnx_models["bge"] / "onnx" / "model.onnx", other)
    return {
        "garbage": (garbage, "ONNX Runtime cannot load it"),
        "inputs": (_graph_with_inputs(onnx_dir / "a.onnx", ["pixels", "mask"]), "its inputs are"),
        "output": (
            _graph_with_inputs(onnx_dir / "b.onnx", ["input_ids", "attention_mask"]),
            r"logits of shape \[batch, 1\]",
        ),
        "other model": (other, "another model's file"),
    }


@pytest.mark.parametrize("kind", ["garbage", "inputs", "output", "other model"])
def test_bad_onnx_files_are_refused_at_load_naming_the_file(
    onnx_models: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    model = tmp_path / "ce"
    shutil.copytree(onnx_models["ce"], model)
    path, why = _bad_files(onnx_models, model)[kind]
    reranker = CrossEncoderReranker(
        str(model), backend="onnx", onnx_file=str(path.relative_to(model))
    )
    with pytest.raises(ConfigurationError, match=why) as caught:
        reranker.load()
    assert str(path) in str(caught.value)
    if kind != "other model":  # shipped under the default name: the same refusal
        shutil.copy(path, model / "onnx" / "model.onnx")
        with pytest.raises(ConfigurationError, match=why):
            CrossEncoderReranker(str(model), backend="onnx").load()


def test_missing_onnx_file_is_refused_naming_it(onnx_models: dict[str, Path]) -> None:
    reranker = CrossEncoderReranker(
        str(onnx_models["ce"]), backend="onnx", onnx_file="onnx/model_O4.onnx"
    )
    with pytest.raises(
        ConfigurationError, match=r"onnx_file 'onnx/model_O4.onnx' is not a file in"
    ):
        reranker.load()


def test_concurrent_callers_share_batches_and_score_as_alone(onnx_models: dict[str, Path]) -> None:
    queries = [f"{QUERY} {i}" for i in range(8)]
    with CrossEncoderReranker(
        str(onnx_models["ce"]), backend="onnx", batch_across_calls=False
    ) as alone:
        expected = {q: scores(alone, q) for q in queries}
    shared = CrossEncoderReranker(str(onnx_models["ce"]), backend="onnx", batch_wait_ms=20)
    got: dict[str, list[float]] = {}
    start = threading.Barrier(len(queries))

    def call(query: str) -> None:
        start.wait()
        got[query] = scores(shared, query)

    threads = [threading.Thread(target=call, args=(q,)) for q in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for q in queries:
        assert max(abs(a - b) for a, b in zip(expected[q], got[q], strict=True)) < 1e-5
    shared.close()


async def test_arerank_on_onnx(onnx_models: dict[str, Path]) -> None:
    with BGEReranker(str(onnx_models["bge"]), backend="onnx") as reranker:
        assert await reranker.arerank(QUERY, CORPUS) == reranker.rerank(QUERY, CORPUS)


TORCH_FREE = """
import json
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError; find_spec says it is absent
from milvus_rerank import BGEReranker, CrossEncoderReranker
for cls, path in ((CrossEncoderReranker, sys.argv[1]), (BGEReranker, sys.argv[2])):
    with cls(path, backend="onnx", quantization=sys.argv[3] or None) as reranker:
        print(json.dumps([r.score for r in reranker.rerank("capital of france", sys.argv[4:])]))
assert not [m for m, v in sys.modules.items() if m.split(".")[0] == "torch" and v is not None]
"""


@pytest.mark.parametrize("quantization", ["", "int8"])
def test_a_shipped_file_loads_and_ranks_without_torch(
    onnx_models: dict[str, Path], quantization: str
) -> None:
    docs = CORPUS[:3]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            TORCH_FREE,
            str(onnx_models["ce"]),
            str(onnx_models["bge"]),
            quantization,
            *docs,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    if not quantization:
        with CrossEncoderReranker(str(onnx_models["ce"])) as torch_r:
            expected = [r.score for r in torch_r.rerank("capital of france", docs)]
        got = json.loads(lines[0])
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < TOLERANCE


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_opens_its_own_session(onnx_models: dict[str, Path]) -> None:
    reranker = CrossEncoderReranker(str(onnx_models["ce"]), backend="onnx", threads=2)
    expected = scores(reranker)  # the parent's session ran (and its thread pool started)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, json.dumps(scores(reranker)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        got = json.loads(pipe.read() or "null")
    os.waitpid(pid, 0)
    assert got is not None and max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-6
    reranker.close()


NO_EXPORTER = """
import sys
sys.modules["torch"] = None
from milvus_rerank import CrossEncoderReranker
from milvus_rerank.core.errors import MissingDependencyError
try:
    CrossEncoderReranker(sys.argv[1], backend="onnx").load()
except MissingDependencyError as exc:
    print(exc)
"""


def test_without_torch_a_model_without_its_file_says_what_to_install(
    tiny_models: dict[str, Path],
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_EXPORTER, str(tiny_models["ce"])],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    assert "ships no onnx/model.onnx" in out.stdout and "'torch'" in out.stdout
    assert 'pip install "milvus-rerank[onnx-export]"' in out.stdout


def test_a_configured_torch_activation_runs_without_torch_on_onnx(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "tanh"
    shutil.copytree(tiny_models["ce"], model)
    config = json.loads((model / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Tanh"}
    (model / "config.json").write_text(json.dumps(config))
    with (
        CrossEncoderReranker(str(model)) as torch_r,
        CrossEncoderReranker(str(model), backend="onnx") as onnx_r,
    ):
        expected, got = scores(torch_r), scores(onnx_r)
        assert max(abs(a - b) for a, b in zip(expected, got, strict=True)) < TOLERANCE
        assert any(abs(s) < 0.999 for s in got) and all(-1 <= s <= 1 for s in got)  # tanh's range


def test_a_same_shape_file_of_other_weights_is_refused_or_replaced(
    onnx_models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another fine-tune's file (same vocabulary and width) passes the shape checks.

    Asked for by name it is refused; the default ``onnx/model.onnx`` of a checkpoint fine-tuned
    in place gives way, with a warning, to an export of the weights.
    """
    import numpy as np
    from safetensors.numpy import load_file, save_file

    model = tmp_path / "ce"
    shutil.copytree(onnx_models["ce"], model)
    CrossEncoderReranker(str(model), backend="onnx").load()  # its own file: taken
    weights = load_file(str(model / "model.safetensors"))
    name = next(n for n in weights if "word_embeddings" in n)
    weights[name] = (weights[name] + np.float32(0.05)).astype(weights[name].dtype)
    save_file(weights, str(model / "model.safetensors"))
    shipped = model / "onnx" / "model.onnx"
    for quantization in (None, "int8"):  # int8: checked on the shipped file, before quantizing
        named = CrossEncoderReranker(
            str(model), backend="onnx", onnx_file="onnx/model.onnx", quantization=quantization
        )
        with pytest.raises(ConfigurationError, match="another model's file") as caught:
            named.load()
        assert str(shipped) in str(caught.value) and "differ from the weights" in str(caught.value)
    docs = ["paris is the capital of france", "a recipe for bread", "the eiffel tower"]
    with caplog.at_level("WARNING", logger="milvus_rerank.providers.onnx"):
        with CrossEncoderReranker(str(model), backend="onnx") as onnx_ranker:
            got = [r.score for r in onnx_ranker.rerank(QUERY, docs)]
    assert any("exporting the weights instead" in r.getMessage() for r in caplog.records)
    with CrossEncoderReranker(str(model)) as torch_ranker:
        want = [r.score for r in torch_ranker.rerank(QUERY, docs)]
    assert got == pytest.approx(want, abs=1e-4)


def test_a_graph_shorter_than_max_length_is_refused_at_load(
    onnx_models: dict[str, Path], tmp_path: Path
) -> None:
    """A file exported for fewer positions than the model reads would fail long batches later."""
    import json

    model = tmp_path / "ce"
    shutil.copytree(onnx_models["ce"], model)
    config = json.loads((model / "config.json").read_text())
    longer = config["max_position_embeddings"] * 4
    config["max_position_embeddings"] = longer
    (model / "config.json").write_text(json.dumps(config))
    reranker = CrossEncoderReranker(str(model), backend="onnx", max_length=longer - 8)
    with pytest.raises(ConfigurationError, match=f"cannot read an input of {longer - 8} tokens"):
        reranker.load()
