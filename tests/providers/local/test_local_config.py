"""Local configuration mistakes are ConfigurationErrors at load, naming the value at fault."""

from __future__ import annotations

import inspect
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from milvus_rerank import BGEReranker, ConfigurationError, CrossEncoderReranker  # noqa: E402
from milvus_rerank.core.errors import InvalidInputError  # noqa: E402
from milvus_rerank.providers.local.devices import resolve_dtype  # noqa: E402
from milvus_rerank.providers.local.options import LOCAL_DEFAULTS, LocalOptions  # noqa: E402
from milvus_rerank.providers.local.reranker import LocalReranker  # noqa: E402

QUERY = "what event in 1956 marked the birth of artificial intelligence"
DOCS = [
    "the dartmouth conference in 1956 marked the birth of artificial intelligence",
    "paris is the capital of france",
    "alan turing proposed a test of machine intelligence " * 8,
]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


# -- devices -----------------------------------------------------------------------------


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda(tiny_models: dict[str, Path], device: str) -> None:
    reranker = CrossEncoderReranker(str(tiny_models["ce"]), device=device)
    with pytest.raises(ConfigurationError, match=f"device '{device}'.*CUDA"):
        reranker.load()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an Apple GPU (MPS)")
def test_mps_where_there_is_none(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError, match="device 'mps' is not available"):
        BGEReranker(str(tiny_models["bge"]), device="mps").load()


@pytest.mark.parametrize("device", ["meta", "hpu"])
def test_devices_that_cannot_score(tiny_models: dict[str, Path], device: str) -> None:
    with pytest.raises(ConfigurationError, match=f"device '{device}' cannot run a reranker"):
        CrossEncoderReranker(str(tiny_models["ce"]), device=device).rerank(QUERY, DOCS)


def test_cpu_index_is_accepted(tiny_models: dict[str, Path]) -> None:
    reranker = CrossEncoderReranker(str(tiny_models["ce"]), device="cpu")
    assert reranker.load() is reranker
    assert reranker.runner.load().device == "cpu"


# -- weights -------------------------------------------------------------------------------


def test_corrupt_weights_name_the_directory(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_models["ce"], folder)
    weights = folder / "model.safetensors"
    assert weights.is_file()
    weights.write_bytes(b"\x00garbage, not a safetensors header" * 10)
    with pytest.raises(ConfigurationError, match=str(folder)) as info:
        CrossEncoderReranker(str(folder)).load()
    assert "model.safetensors" in str(info.value) or "Safetensor" in str(info.value)


def test_truncated_weights_name_the_directory(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "truncated"
    shutil.copytree(tiny_models["bge"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConfigurationError, match=str(folder)):
        BGEReranker(str(folder)).rerank(QUERY, DOCS)


@pytest.mark.slow  # builds and loads its own model
def test_weights_overwritten_under_a_loaded_model_change_nothing(tmp_path: Path) -> None:
    """``cp`` of other weights over a running model's file changed its scores (item 5)."""
    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

    folder = build_tiny_cross_encoder(tmp_path / "served", initializer_range=0.2)
    other = build_tiny_cross_encoder(tmp_path / "other", initializer_range=0.2, seed=1)
    reranker = CrossEncoderReranker(str(folder), device="cpu").load()
    before = reranker.score_pairs([QUERY] * len(DOCS), DOCS)
    weights = folder / "model.safetensors"
    inode = weights.stat().st_ino
    shutil.copyfile(other / "model.safetensors", weights)  # in place, as cp writes it
    assert weights.stat().st_ino == inode
    assert CrossEncoderReranker(str(folder), device="cpu").score_pairs([QUERY], DOCS[:1]) != [
        before[0]
    ], "the file does hold other weights now"
    assert reranker.score_pairs([QUERY] * len(DOCS), DOCS) == before


TRUNCATE_UNDER_A_LOADED_MODEL = """
import os, sys
from milvus_rerank import CrossEncoderReranker
from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

folder = build_tiny_cross_encoder(sys.argv[1], num_layers=4, hidden_size=256, num_heads=4)
reranker = CrossEncoderReranker(str(folder), device="cpu", batch_across_calls=False).load()
docs = ["paris is the capital of france", "berlin is a city in germany"]
before = reranker.score_pairs(["capital of france"] * 2, docs)
os.truncate(folder / "model.safetensors", 0)
sys.exit(0 if reranker.score_pairs(["capital of france"] * 2, docs) == before else 1)
"""


@pytest.mark.slow  # builds and loads its own model
def test_weights_truncated_under_a_loaded_model_do_not_kill_it(tmp_path: Path) -> None:
    """Truncating a running model's weights file killed the process with SIGBUS (item 5)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", TRUNCATE_UNDER_A_LOADED_MODEL, str(tmp_path / "model")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


# -- where the model is --------------------------------------------------------------------


def test_a_missing_path_says_no_such_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in (
        "./doesnotexist",
        os.path.join("..", "elsewhere", "model"),
        "models/a/b",
        str(tmp_path / "gone"),
    ):
        with pytest.raises(ConfigurationError, match="no such directory") as info:
            BGEReranker(name).load()
        assert "hf download" not in str(info.value), name  # not a hub name: no hub hint
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigurationError, match="is a file, not a model directory"):
        CrossEncoderReranker("weights.bin").load()


def test_a_hub_name_still_gets_the_download_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="hf download") as info:
        BGEReranker("milvus-rerank-tests/no-such-model", cache_dir=str(tmp_path)).load()
    assert "no such directory" not in str(info.value)


def test_a_directory_without_config_holds_no_model(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigurationError, match="it is empty, so it holds no model") as info:
        BGEReranker(str(empty)).load()
    assert "sentencepiece" not in str(info.value) and str(empty) in str(info.value)
    (empty / "README.md").write_text("weights elsewhere")
    with pytest.raises(ConfigurationError, match="holds no config.json"):
        CrossEncoderReranker(str(empty)).load()


# -- no progress bars ------------------------------------------------------------------------


# -- tokenizer files (issue 23, item 1) ------------------------------------------------------


@pytest.mark.parametrize("family", ["ce", "bge"])
def test_a_directory_without_tokenizer_files_is_refused(
    tiny_models: dict[str, Path], tmp_path: Path, family: str
) -> None:
    """Weights and config alone (a partial download) load a specials-only tokenizer: refused."""
    folder = tmp_path / "partial"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_models[family] / name, folder / name)
    cls = {"ce": CrossEncoderReranker, "bge": BGEReranker}[family]
    with pytest.raises(ConfigurationError, match="no tokenizer file.*tokenizer.json") as info:
        cls(str(folder)).load()
    assert str(folder) in str(info.value)


def test_a_tokenizer_far_smaller_than_the_vocabulary_is_refused(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Another model's (small) tokenizer files beside these weights: refused, sizes named."""
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_models["ce"], folder)
    config = folder / "config.json"
    import json

    settings = json.loads(config.read_text())
    settings["vocab_size"] = 30522  # a real BERT vocabulary; the tokenizer here knows ~300
    config.write_text(json.dumps(settings))
    with pytest.raises(ConfigurationError, match=r"tokenizer knows \d+ tokens.*30522"):
        CrossEncoderReranker(str(folder)).load()


def test_the_cli_names_the_missing_tokenizer(
    tiny_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from milvus_rerank.app.cli import main

    folder = tmp_path / "partial"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_models["ce"] / name, folder / name)
    docs = tmp_path / "docs.jsonl"
    docs.write_text('"milvus is a vector database"\n"paris france"\n')
    code = main(["rerank", "--reranker", "cross-encoder", "--model", str(folder), "q", str(docs)])
    assert code == 2
    assert "no tokenizer file" in capsys.readouterr().err


@pytest.fixture
def bars_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' progress bars switched on (the tests run with them off)."""
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(hf_logging, "_tqdm_active", True)


@pytest.mark.usefixtures("bars_on")
def test_loading_and_building_print_no_progress_bar(
    tiny_models: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as hf_logging

    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

    path = build_tiny_cross_encoder(tmp_path / "m")
    CrossEncoderReranker(str(path), device="cpu").load()
    BGEReranker(str(tiny_models["bge"]), device="cpu").load()
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err
    assert captured.out == ""
    # The caller's own bars are untouched: the setting was not switched off for good.
    assert hf_logging.is_progress_bar_enabled()
    for _ in hf_logging.tqdm(range(2), desc="caller's bar"):
        pass
    assert "caller's bar" in capfd.readouterr().err


@pytest.mark.usefixtures("bars_on")
def test_quiet_loads_leave_other_threads_and_hooks_alone(
    capfd: pytest.CaptureFixture[str],
) -> None:
    import threading

    from transformers.utils import logging as hf_logging

    from milvus_rerank.providers.local.loading import quiet_progress

    seen: list[str] = []

    def callers_hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seen.append(kwargs.get("desc", ""))
        return factory(*args, **kwargs)

    previous = hf_logging.set_tqdm_hook(callers_hook)
    try:
        inside, outside = threading.Event(), threading.Event()

        def other_thread() -> None:
            inside.wait(10)
            for _ in hf_logging.tqdm(range(2), desc="other thread"):
                pass
            outside.set()

        thread = threading.Thread(target=other_thread)
        thread.start()
        with quiet_progress():
            inside.set()
            outside.wait(10)
            for _ in hf_logging.tqdm(range(2), desc="quiet thread"):
                pass
        thread.join(10)
        err = capfd.readouterr().err
        assert "other thread" in err and "quiet thread" not in err
        assert seen == ["other thread"]  # the caller's hook still sees what is not ours
        assert hf_logging.set_tqdm_hook(callers_hook) is callers_hook  # and is back in place
    finally:
        hf_logging.set_tqdm_hook(previous)


# -- max_length ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "limit"), [("ce", 512), ("bge", 512)])
def test_max_length_beyond_the_position_table(
    tiny_models: dict[str, Path], kind: str, limit: int
) -> None:
    cls = CrossEncoderReranker if kind == "ce" else BGEReranker
    with pytest.raises(ConfigurationError, match=f"max_length={limit + 1}.*{limit} tokens"):
        cls(str(tiny_models[kind]), max_length=limit + 1).load()
    # The largest that fits still scores a document longer than it.
    at_limit = cls(str(tiny_models[kind]), max_length=limit)
    assert len(at_limit.rerank(QUERY, ["milvus is a vector database " * 200])) == 1
    assert at_limit.runner.load().max_length == limit


@pytest.mark.parametrize("max_length", [1, 8, 16])
def test_bge_max_length_with_no_room_for_a_passage(
    tiny_models: dict[str, Path], max_length: int
) -> None:
    reranker = BGEReranker(str(tiny_models["bge"]), max_length=max_length)
    with pytest.raises(ConfigurationError, match=f"max_length={max_length} leaves no room"):
        reranker.load()


def test_bge_small_max_length_is_honoured(tiny_models: dict[str, Path]) -> None:
    reranker = BGEReranker(str(tiny_models["bge"]), max_length=17)
    rows = reranker.runner.encode_pairs(QUERY * 3, DOCS)
    assert max(len(row["input_ids"]) for row in rows) == 17
    tight = BGEReranker(str(tiny_models["bge"]), max_length=9, query_max_length=3)
    rows = tight.runner.encode_pairs(QUERY, DOCS)
    assert [len(row["input_ids"]) for row in rows] == [9, 9, 9]
    assert len(tight.rerank(QUERY, DOCS)) == len(DOCS)


def test_cross_encoder_max_length_below_its_special_tokens(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError, match="max_length=3 leaves no room"):
        CrossEncoderReranker(str(tiny_models["ce"]), max_length=3).load()
    rows = CrossEncoderReranker(str(tiny_models["ce"]), max_length=4).runner.encode_pairs(
        QUERY, DOCS
    )
    assert all(len(row["input_ids"]) == 4 for row in rows)


# -- dtype and the other options -----------------------------------------------------------


def test_dtype_auto_is_float32_on_the_cpu(tiny_models: dict[str, Path]) -> None:
    loaded = BGEReranker(str(tiny_models["bge"]), device="cpu").runner.load()
    assert loaded.dtype == "float32"
    assert next(loaded.model.parameters()).dtype == torch.float32


def test_dtype_auto_rule() -> None:
    assert resolve_dtype("auto", True, "cuda:0") == "float16"
    assert resolve_dtype("auto", True, "cuda", "bfloat16") == "bfloat16"
    assert resolve_dtype("auto", False, "cuda") == "float32"
    assert resolve_dtype("auto", True, "cpu") == "float32"
    assert resolve_dtype("bfloat16", False, "cpu") == "bfloat16"


def test_explicit_bfloat16_loads_in_bfloat16(tiny_models: dict[str, Path]) -> None:
    path = str(tiny_models["ce"])
    half = CrossEncoderReranker(path, dtype="bfloat16", device="cpu")
    assert next(half.runner.load().model.parameters()).dtype == torch.bfloat16
    full = CrossEncoderReranker(path, device="cpu")
    ours, ref = half.score_pairs([QUERY] * 3, DOCS), full.score_pairs([QUERY] * 3, DOCS)
    assert ours != ref, "bfloat16 weights round differently"
    assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) < 0.1
    assert "dtype='bfloat16'" in repr(half)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dtype": "float64"},
        {"dtype": "fp16"},
        {"use_fp16": "yes"},
        {"trust_remote_code": 1},
        {"device": 0},
        {"revision": ""},
        {"batch_size": None},
        {"max_tokens_per_batch": 0},
    ],
)
def test_bad_option_values(kwargs: dict[str, object]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ConfigurationError, match=name):
        BGEReranker("x", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [BGEReranker, CrossEncoderReranker])
def test_unknown_option_is_named(cls: type[LocalReranker]) -> None:
    with pytest.raises(ConfigurationError, match="'max_len'.*max_length"):
        cls("x", max_len=12)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"normalize": "no"}, "normalize"),
        ({"query_max_length": 0}, "query_max_length"),
    ],
)
def test_bad_bge_options(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        BGEReranker("x", **kwargs)  # type: ignore[arg-type]


def test_options_are_declared_once() -> None:
    assert set(LOCAL_DEFAULTS) == set(LocalOptions.__annotations__)
    for cls in (BGEReranker, CrossEncoderReranker):
        params = inspect.signature(cls.__init__).parameters
        assert next(iter(params.values())).name == "self"
        assert list(params)[1] == "model_name"
        assert params["model_name"].default == cls.default_model
        assert not set(params) & set(LOCAL_DEFAULTS), "shared options come from LocalOptions"
        assert params["options"].kind is inspect.Parameter.VAR_KEYWORD


def test_defaults_come_from_one_place() -> None:
    runner = CrossEncoderReranker("x").runner
    assert runner.options == LOCAL_DEFAULTS
    assert BGEReranker("x", batch_size=4).runner.options == {**LOCAL_DEFAULTS, "batch_size": 4}


# -- score_pairs --------------------------------------------------------------------------


def test_score_pairs_is_one_pass_over_mixed_queries(tiny_models: dict[str, Path]) -> None:
    reranker = BGEReranker(str(tiny_models["bge"]))
    queries = [QUERY, "paris", QUERY]
    docs = [DOCS[0], DOCS[1], DOCS[2]]
    expected = [
        reranker._score(QUERY, [DOCS[0]])[0],
        reranker._score("paris", [DOCS[1]])[0],
        reranker._score(QUERY, [DOCS[2]])[0],
    ]
    got = reranker.score_pairs(queries, docs)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-5
    assert reranker.score_pairs([], []) == []


def test_score_pairs_checks_its_input(tiny_models: dict[str, Path]) -> None:
    reranker = CrossEncoderReranker(str(tiny_models["ce"]))
    with pytest.raises(InvalidInputError, match="2 queries for 1 documents"):
        reranker.score_pairs([QUERY, QUERY], [DOCS[0]])
    with pytest.raises(InvalidInputError, match="documents"):
        reranker.score_pairs([QUERY], [3])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="query"):
        reranker.score_pairs([" "], [DOCS[0]])


# -- pymilvus-model's idioms (issue 23, item 9) ----------------------------------------------


def test_an_empty_device_picks_one_as_pymilvus_models_default_does(
    tiny_models: dict[str, Path],
) -> None:
    """CrossEncoderRerankFunction's default is device="": here, as None, the library picks."""
    reranker = CrossEncoderReranker(str(tiny_models["ce"]), device="")
    assert reranker.device is None
    reranker.load()
    assert reranker.device == "cpu"  # no GPU on the machines that run this suite
    assert reranker.batch_size == 32


@pytest.mark.parametrize("device", [["cuda:0", "cuda:1"], ("cpu",)])
def test_a_list_of_devices_names_the_replacement(
    tiny_models: dict[str, Path], device: object
) -> None:
    with pytest.raises(ConfigurationError, match=r"device takes one device.*one reranker per"):
        BGEReranker(str(tiny_models["bge"]), device=device)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cls", "name", "replacement"),
    [
        (CrossEncoderReranker, "activation_fct", "activation='sigmoid'"),
        (BGEReranker, "activation_fct", "normalize="),
        (BGEReranker, "devices", "device='cuda:0'"),
    ],
)
def test_pymilvus_model_options_name_their_replacement(
    tiny_models: dict[str, Path], cls: type[LocalReranker], name: str, replacement: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"'{name}': use .*{re.escape(replacement)}"):
        cls(str(tiny_models["ce"]), **{name: object()})  # type: ignore[arg-type]
