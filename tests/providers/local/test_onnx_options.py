"""The ONNX backend's options and flags: checked at construction, nothing loaded (unit tier)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from milvus_rerank import BGEReranker, CrossEncoderReranker, Qwen3Reranker
from milvus_rerank.app.cli import make_parser
from milvus_rerank.app.commands import MODEL_OPTIONS, _option
from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local import onnx_files
from milvus_rerank.providers.local.onnx_session import machine_threads
from milvus_rerank.providers.local.options import LOCAL_DEFAULTS


def test_torch_stays_the_default() -> None:
    assert LOCAL_DEFAULTS["backend"] == "torch"
    reranker = CrossEncoderReranker("x")
    assert reranker.runner.backend == "torch" and "backend" not in repr(reranker)


def test_onnx_options_are_taken_and_shown() -> None:
    reranker = BGEReranker(
        "x", backend="onnx", quantization="int8", onnx_file="onnx/model.onnx", threads=2
    )
    assert reranker.runner.backend == reranker.family.backend == "onnx"
    for shown in ("backend='onnx'", "quantization='int8'", "onnx_file='onnx/model.onnx'"):
        assert shown in repr(reranker)
    assert (
        CrossEncoderReranker("x", backend="onnx", onnx_file=Path("a.onnx")).runner.options[
            "onnx_file"
        ]
        == "a.onnx"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "tensorrt"}, r"backend must be one of 'torch', 'onnx', got 'tensorrt'"),
        ({"backend": "onnx", "quantization": "int4"}, r"quantization .* got 'int4'"),
        ({"quantization": "int8"}, r"quantization='int8' needs backend='onnx'"),
        ({"threads": 2}, r"threads=2 needs backend='onnx'"),
        ({"onnx_file": "onnx/model.onnx"}, r"onnx_file='onnx/model.onnx' needs backend='onnx'"),
        ({"backend": "onnx", "device": "cuda"}, r"device 'cuda' cannot run backend='onnx'"),
        ({"backend": "onnx", "dtype": "float16"}, r"dtype 'float16' cannot run backend='onnx'"),
        ({"backend": "onnx", "threads": 0}, r"threads"),
        ({"backend": "onnx", "threads": True}, r"threads"),
        ({"backend": "onnx", "use_fp16": True}, r"use_fp16=True cannot run backend='onnx'"),
        ({"backend": "onnx", "threads": 10**9}, r"threads must be at most 1024.*1000000000"),
        ({"backend": "onnx", "onnx_file": ""}, r"onnx_file must be a non-empty str"),
    ],
)
def test_bad_backend_options_are_refused_naming_the_value(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CrossEncoderReranker("x", **options)


def test_families_without_an_onnx_path_are_refused_at_construction() -> None:
    with pytest.raises(
        ConfigurationError, match=r"the Qwen3 family has no ONNX path.*backend='torch'"
    ):
        Qwen3Reranker("x", backend="onnx")


def test_onnx_on_the_cpu_accepts_cpu_and_float32() -> None:
    reranker = CrossEncoderReranker("x", backend="onnx", device="cpu", dtype="float32")
    assert reranker.runner.options["device"] == "cpu"


def test_the_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(onnx_files.CACHE_ENV, str(tmp_path))
    assert onnx_files.onnx_cache_dir() == tmp_path / "onnx"
    monkeypatch.delenv(onnx_files.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert onnx_files.onnx_cache_dir() == tmp_path / "xdg" / "milvus-rerank" / "onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert onnx_files.onnx_cache_dir() == Path("~/.cache/milvus-rerank/onnx").expanduser()


def test_cached_builds_once_and_renames_into_place(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(onnx_files.CACHE_ENV, str(tmp_path))
    built: list[Path] = []

    def build(folder: Path) -> None:
        built.append(folder)
        (folder / onnx_files.MODEL_FILE).write_bytes(b"graph")

    first = onnx_files.cached("export", {"model": "m"}, build)
    again = onnx_files.cached("export", {"model": "m"}, build)
    other = onnx_files.cached("export", {"model": "n"}, build)
    assert first == again != other and len(built) == 2
    assert first.read_bytes() == b"graph" and not built[0].exists()  # the work folder moved
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir() if p.name.startswith(".")) == []


def test_a_failed_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(onnx_files.CACHE_ENV, str(tmp_path))

    def build(folder: Path) -> None:
        (folder / onnx_files.MODEL_FILE).write_bytes(b"half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        onnx_files.cached("export", {"model": "m"}, build)
    assert list((tmp_path / "onnx").iterdir()) == []


def test_an_unwritable_cache_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(onnx_files.CACHE_ENV, str(blocker))
    with pytest.raises(
        ConfigurationError, match=r"Cannot write the ONNX cache .*MILVUS_RERANK_CACHE"
    ):
        onnx_files.cached("export", {}, lambda folder: None)


def test_threads_share_the_machine_among_workers() -> None:
    assert machine_threads(1) >= machine_threads(2) >= 1
    assert machine_threads(10_000) == 1


def test_cli_flags_parse_to_the_options() -> None:
    args = make_parser().parse_args(
        [
            *("rerank", "q", "docs.jsonl", "--reranker", "cross-encoder", "--backend", "onnx"),
            *("--quantization", "INT8", "--onnx-file", "onnx/m.onnx", "--threads", "3"),
        ]
    )
    options = {n: _option(args, n) for n in MODEL_OPTIONS if _option(args, n) is not None}
    assert options == {
        "backend": "onnx",
        "quantization": "int8",
        "onnx_file": "onnx/m.onnx",
        "threads": 3,
    }
    none = make_parser().parse_args(["serve", "--backend", "onnx", "--quantization", "none"])
    assert _option(none, "quantization") is None


@pytest.mark.parametrize(
    "argv",
    [
        ["rerank", "q", "d", "--backend", "tensorrt"],
        ["rerank", "q", "d", "--quantization", "int4"],
        ["rerank", "q", "d", "--threads", "0"],
    ],
)
def test_bad_cli_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        make_parser().parse_args(argv)
    assert caught.value.code == 2


def test_a_hub_model_s_file_comes_through_the_hub_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from milvus_rerank.providers.local.family import ModelSource

    asked: list[tuple[str, str, bool]] = []
    present = {"onnx/model.onnx": tmp_path / "model.onnx"}
    present["onnx/model.onnx"].write_bytes(b"")

    def download(repo: str, filename: str, **kw: Any) -> str:
        asked.append((repo, filename, kw["local_files_only"]))
        if filename not in present:
            raise EntryNotFoundError(f"{filename} not in {repo}")
        return str(present[filename])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    source = ModelSource("org/model", None, "main", None, False)
    assert onnx_files.shipped_file(source, None, False) == present["onnx/model.onnx"]
    assert asked == [("org/model", "onnx/model.onnx", False)]
    del present["onnx/model.onnx"]
    assert onnx_files.shipped_file(source, None, True) is None  # no file: export instead
    with pytest.raises(
        ConfigurationError, match=r"onnx_file 'onnx/q.onnx' is not a file in hub repo"
    ):
        onnx_files.shipped_file(source, "onnx/q.onnx", False)
