"""The ONNX cache's keys and entries: content-keyed, self-healing, swept (unit tier).

Cases from an outside attack: a model under a folder named ``onnx`` lost its weights from the
key; same-size weights with normalized mtimes kept the old graph; a damaged entry failed every
later load; a full disk was blamed on the model; killed builds left folders forever.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local import onnx_files


def _model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "config.json").write_text("{}")  # the model's own onnx/ folder
    return folder


def test_a_model_under_a_folder_named_onnx_keeps_its_weights_in_the_key(tmp_path: Path) -> None:
    model = _model(tmp_path / "onnx" / "ce", b"weights")
    names = [name for name, _, _ in onnx_files.model_files_key(model)]
    assert names == ["config.json", "model.safetensors"]


def test_the_key_follows_the_weights_content_not_their_size_or_mtime(tmp_path: Path) -> None:
    model = _model(tmp_path / "ce", b"weights-A")
    os.utime(model / "model.safetensors", ns=(1, 1))
    before = onnx_files.model_files_key(model)
    (model / "model.safetensors").write_bytes(b"weights-B")  # same size
    os.utime(model / "model.safetensors", ns=(1, 1))  # same mtime (a normalized build)
    after = onnx_files.model_files_key(model)
    assert [(n, size) for n, size, _ in before] == [(n, size) for n, size, _ in after]
    assert before != after


def _build(built: list[Path]):  # type: ignore[no-untyped-def]
    def build(folder: Path) -> None:
        built.append(folder)
        (folder / onnx_files.MODEL_FILE).write_bytes(b"graph-bytes")

    return build


@pytest.mark.parametrize("damage", ["removed", "truncated", "record removed"])
def test_a_damaged_entry_is_built_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, damage: str
) -> None:
    monkeypatch.setenv(onnx_files.CACHE_ENV, str(tmp_path))
    built: list[Path] = []
    done = onnx_files.cached("export", {"model": "m"}, _build(built))
    if damage == "removed":
        done.unlink()
    elif damage == "truncated":
        done.write_bytes(b"graph")
    else:
        (done.parent / onnx_files.SOURCE_FILE).unlink()
    again = onnx_files.cached("export", {"model": "m"}, _build(built))
    assert again == done and again.read_bytes() == b"graph-bytes" and len(built) == 2
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [done.parent.name]
    onnx_files.cached("export", {"model": "m"}, _build(built))
    assert len(built) == 2  # whole again: reused


def test_a_full_disk_names_the_cache_not_the_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(onnx_files.CACHE_ENV, str(tmp_path))

    def build(folder: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ConfigurationError) as info:
        onnx_files.cached("export", {"model": "m"}, build)
    assert str(tmp_path / "onnx") in str(info.value) and "No space left" in str(info.value)
    assert list((tmp_path / "onnx").iterdir()) == []


def test_folders_left_by_killed_builds_are_swept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(onnx_files.CACHE_ENV, str(tmp_path))
    root = tmp_path / "onnx"
    old, fresh = root / ".export-abc.x1", root / ".export-abc.x2"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"half")
    stale = time.time() - onnx_files.STALE_AFTER - 60
    os.utime(old, (stale, stale))
    onnx_files.cached("export", {"model": "m"}, _build([]))
    assert not old.exists() and fresh.exists()  # a build under way in another process stays


def test_int8_of_a_half_precision_file_is_refused_and_caches_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    monkeypatch.setenv(onnx_files.CACHE_ENV, str(tmp_path / "cache"))
    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float16), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "half",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT16, [1, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, [1, 4])],
        [weight],
    )
    path = tmp_path / "model_fp16.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ConfigurationError, match=r"model_fp16\.onnx.*float16.*float32"):
        onnx_files.quantize_int8(path)
    assert [p.name for p in (tmp_path / "cache" / "onnx").iterdir()] == []


def test_a_missing_onnx_file_is_named_clipped(tmp_path: Path) -> None:
    from milvus_rerank.providers.local.family import ModelSource

    source = ModelSource(str(tmp_path), tmp_path, None, None, False)
    with pytest.raises(ConfigurationError) as info:
        onnx_files.shipped_file(source, "x" * 100_000, local_only=True)
    assert len(str(info.value)) < 600 and "is not a file in" in str(info.value)
