"""The command line: the demo prints both rankings; rerank turns JSONL into ranked JSONL.

Bad input and configuration are one-line errors with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from milvus_rerank import __version__
from milvus_rerank.app.cli import main, make_parser
from milvus_rerank.core.registry import PROVIDERS
from tests.conftest import ScoreTableReranker


def left_behind(tmpdir: Path) -> list[str]:
    """What a run left in ``tmpdir``, less torch's compile cache.

    Building a model makes torch create ``torchinductor_<user>``, one per user that every
    process shares and reuses: a cache, not a per-run leftover.
    """
    return sorted(p.name for p in tmpdir.iterdir() if not p.name.startswith("torchinductor_"))


@pytest.fixture
def fresh_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty TMPDIR for this test alone (``tempfile`` and child processes use it)."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder


#: A model no Hugging Face cache can hold: the demo and eval must fall back to the tiny stand-in
#: whatever this machine has cached (the hub is offline in the tests).
NO_SUCH_MODEL = "milvus-rerank-tests/no-such-model"


#: Tests that run ``serve``'s real port check (the others need not find port 8000 free).
REAL_PORT_CHECK = {"test_serve_checks_its_port_before_the_model_loads"}


@pytest.fixture(autouse=True)
def any_port_free(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` binds its port before loading the model: here, unless the test checks that."""
    import milvus_rerank.app.commands as commands

    if request.node.originalname not in REAL_PORT_CHECK:
        monkeypatch.setattr(commands, "check_port", lambda host, port: None, raising=False)


def write_docs(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``, expect exit status 2 and a one-line error; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("milvus-rerank: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.integration
def test_demo_prints_bm25_and_reranked_tables(
    capsys: pytest.CaptureFixture[str], fresh_tmpdir: Path
) -> None:
    argv = ["demo", "--reranker", "cross-encoder", "--model", NO_SUCH_MODEL, "--top-k", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "TINY RANDOMLY INITIALIZED" in out  # no weights here: the stand-in is announced
    assert "First stage: Milvus BM25 full-text search, top 4" in out
    assert "Reranked by CrossEncoderReranker" in out
    ranked = out.split("Reranked by")[1].splitlines()[2:6]
    assert [line.split()[0] for line in ranked] == ["1", "2", "3", "4"]
    assert left_behind(fresh_tmpdir) == []  # the stand-in and the Milvus Lite file are gone
    # The embedded Milvus Lite server is stopped too: nothing re-creates the folder afterwards.
    from milvus_lite.server_manager import server_manager_instance

    assert not [p for p in server_manager_instance._servers if p.startswith(str(fresh_tmpdir))]
    time.sleep(1.0)
    assert left_behind(fresh_tmpdir) == []


def test_rerank_jsonl(
    tmp_path: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    docs = write_docs(
        tmp_path / "docs.jsonl",
        [json.dumps({"text": t, "id": i}) for i, t in enumerate(["a cat", "milvus db", "x"])],
    )
    args = [
        "rerank",
        "--reranker",
        "cross-encoder",
        "--model",
        str(tiny_models["ce"]),
        "what is milvus",
        str(docs),
        "--top-n",
        "2",
    ]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[0]["score"] >= rows[1]["score"]
    assert {"text", "id", "index", "score"} <= set(rows[0])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"milvus-rerank {__version__}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_the_demo_defaults_to_a_small_cross_encoder() -> None:
    # A first `make demo` downloads a ~90 MB MiniLM, not the 2.2 GB bge-reranker-v2-m3.
    parser = make_parser()
    demo = parser.parse_args(["demo"])
    assert demo.reranker == "cross-encoder" and demo.model is None
    assert PROVIDERS[demo.reranker].default_model == "cross-encoder/ms-marco-MiniLM-L-6-v2"
    assert "default: cross-encoder" in _subparsers(parser)["demo"].format_help()
    for command in (["rerank", "q", "-"], ["serve"], ["eval", "data"]):
        assert parser.parse_args(command).reranker == "bge", command


def test_every_option_says_its_default() -> None:
    parser = make_parser()
    commands = _subparsers(parser)
    assert set(commands) == {"demo", "rerank", "serve", "eval"}
    for name, sub in [("", parser), *commands.items()]:
        for action in sub._actions:
            if not action.option_strings or action.dest in {"help", "version"}:
                continue
            assert action.help and "default" in action.help, (name, action.option_strings)
        assert all(key in sub.format_help() for key in PROVIDERS)  # the rerankers, listed


def test_missing_documents_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    err = error_of(["rerank", "q", str(missing)], capsys)
    assert str(missing) in err and "cannot read" in err


def test_bad_jsonl_line_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = write_docs(tmp_path / "docs.jsonl", ['{"text": "a"}', "", '{"text": "b"', "{}"])
    err = error_of(["rerank", "q", str(docs)], capsys)
    assert f"{docs}:3:" in err and "not a JSON line" in err


def test_missing_text_field_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = write_docs(tmp_path / "docs.jsonl", ['{"body": "a"}', '{"text": "b"}'])
    err = error_of(["rerank", "q", str(docs)], capsys)
    assert f"{docs}:1:" in err and "'text'" in err
    err = error_of(["rerank", "q", str(docs), "--text-field", "body"], capsys)
    assert f"{docs}:2:" in err and "'body'" in err


def test_corrupt_model_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    docs = write_docs(tmp_path / "docs.jsonl", ['{"text": "a"}'])
    err = error_of(
        ["rerank", "--reranker", "cross-encoder", "--model", str(model), "q", str(docs)], capsys
    )
    assert "Cannot load a reranker model" in err and str(model) in err


def test_unavailable_device(
    tmp_path: Path,
    tiny_models: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    fresh_tmpdir: Path,
) -> None:
    import torch

    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    docs = write_docs(tmp_path / "docs.jsonl", ['{"text": "a"}'])
    argv = ["--reranker", "cross-encoder", "--device", device]
    err = error_of(["rerank", *argv, "--model", str(tiny_models["ce"]), "q", str(docs)], capsys)
    assert repr(device) in err
    # The demo's stand-in cannot run there either: the device error, not a stand-in's notes.
    assert main(["demo", *argv, "--model", NO_SUCH_MODEL]) == 2
    captured = capsys.readouterr()
    assert repr(device) in captured.err and "TINY" not in captured.out
    assert left_behind(fresh_tmpdir) == []


def test_device_errors_speak_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    docs = write_docs(tmp_path / "docs.jsonl", ['{"text": "a"}'])
    # A model that does not exist: the device is checked first, before any load.
    argv = ["rerank", "--reranker", "bge", "--model", str(tmp_path / "none"), "q", str(docs)]
    err = error_of([*argv, "--device", "cuda"], capsys)
    assert "'cuda'" in err and "--device cpu" in err and "device='cpu'" not in err


def test_model_path_errors_name_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    docs = write_docs(tmp_path / "docs.jsonl", ['{"text": "a"}'])
    err = error_of(
        ["rerank", "--reranker", "bge", "--model", "./doesnotexist", "q", str(docs)], capsys
    )
    assert "no such directory" in err and "hf download" not in err
    (tmp_path / "emptydir").mkdir()
    err = error_of(["rerank", "--reranker", "bge", "--model", "./emptydir", "q", str(docs)], capsys)
    assert "holds no model" in err and "sentencepiece" not in err


@pytest.mark.parametrize("query", ["", "   "])
def test_the_query_is_checked_before_the_model(
    query: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = write_docs(tmp_path / "docs.jsonl", ['{"text": "a"}'])
    argv = ["rerank", "--reranker", "cross-encoder", "--model", str(tmp_path / "no-model")]
    err = error_of([*argv, query, str(docs)], capsys)  # no model there: a load would fail first
    assert "query must be a non-empty string" in err


def test_options_the_reranker_does_not_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = write_docs(tmp_path / "docs.jsonl", ['{"text": "a"}'])
    err = error_of(["rerank", "--reranker", "cohere", "--device", "cpu", "q", str(docs)], capsys)
    assert "'cpu'" in err and "local rerankers" in err
    err = error_of(["rerank", "--base-url", "http://x", "q", str(docs)], capsys)
    assert "'http://x'" in err and "API rerankers" in err


class Interrupted(ScoreTableReranker):
    """Scoring that Ctrl-C interrupts."""

    def _score(self, query: str, documents: list[str]) -> list[float]:
        raise KeyboardInterrupt


def _interrupt(*args: object, **kwargs: object) -> int:
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", ["rerank", "serve", "eval", "demo"])
def test_ctrl_c_exits_130_with_one_line(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import milvus_rerank.app.commands
    import milvus_rerank.app.demo
    import milvus_rerank.app.evaluate
    import milvus_rerank.app.serve

    @contextlib.contextmanager
    def opened(*args: object, **kwargs: object) -> Iterator[tuple[ScoreTableReranker, bool]]:
        yield Interrupted({"a": 1.0}), False

    monkeypatch.setattr(milvus_rerank.app.commands, "open_from_args", opened)
    monkeypatch.setattr(milvus_rerank.app.serve, "run_server", _interrupt)
    monkeypatch.setattr(milvus_rerank.app.evaluate, "run_eval", _interrupt)
    monkeypatch.setattr(milvus_rerank.app.demo, "run_demo", _interrupt)
    monkeypatch.delenv("MILVUS_RERANK_API_KEY", raising=False)
    docs = write_docs(tmp_path / "docs.jsonl", ['{"text": "a"}', '{"text": "b"}'])
    beir = str(Path(__file__).resolve().parents[1] / "fixtures" / "beir-mini")
    argv = {"rerank": ["rerank", "q", str(docs)], "eval": ["eval", beir]}.get(command, [command])
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err == f"milvus-rerank: interrupted ({command})\n"


def test_bad_numbers_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--top-k", "0"])
    assert exited.value.code == 2
    assert "--top-k: must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["rerank", "q", "docs.jsonl", "--reranker", "nope"],
        ["rerank", "q", "docs.jsonl", "--top-n", "-3"],
        [],
        ["eval"],
    ],
)
def test_usage_errors_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["inf", "nan", "-5", "1e9"])
def test_serve_wait_is_bounded(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--max-wait-ms", value])
    assert exit_info.value.code == 2 and "--max-wait-ms" in capsys.readouterr().err


# -- model options: --instruction, --normalize, --max-length, --dtype ----------------------------


@pytest.fixture(scope="module")
def llm_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    from milvus_rerank import BGELLMReranker, Qwen3Reranker

    root = tmp_path_factory.mktemp("tiny-llm-cli")
    return {
        "qwen3": Qwen3Reranker.build_tiny_checkpoint(root / "qwen3"),
        "bge-llm": BGELLMReranker.build_tiny_checkpoint(root / "bge-llm"),
    }


LLM_DOCS = ["paris is the capital of france", "berlin is in germany", "milvus", "a cat"]


def _ranked(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[tuple[int, float]]:
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return [(row["index"], row["score"]) for row in rows]


def test_model_options_reach_the_llm_reranker(
    tmp_path: Path, llm_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from milvus_rerank import BGELLMReranker, Qwen3Reranker

    docs = write_docs(tmp_path / "docs.jsonl", [json.dumps(d) for d in LLM_DOCS])
    path = str(llm_models["qwen3"])
    base = ["rerank", "--reranker", "qwen3", "--model", path, "--device", "cpu"]
    legal = "Given a legal question, retrieve the statutes"
    argv = [*base, "--instruction", legal, "--max-length", "80", "--dtype", "float32"]
    got = _ranked([*argv, "capital of france", str(docs)], capsys)
    reranker = Qwen3Reranker(path, device="cpu", instruction=legal, max_length=80)
    want = [(r.index, r.score) for r in reranker.rerank("capital of france", LLM_DOCS)]
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)
    default = dict(_ranked([*base, "capital of france", str(docs)], capsys))
    assert any(abs(default[i] - s) > 1e-4 for i, s in got)  # the instruction did change scores

    gemma = str(llm_models["bge-llm"])
    base = ["rerank", "--reranker", "bge-llm", "--model", gemma, "--device", "cpu"]
    raw = dict(_ranked([*base, "q", str(docs)], capsys))
    normalized = dict(_ranked([*base, "--normalize", "q", str(docs)], capsys))
    want_raw = {r.index: r.score for r in BGELLMReranker(gemma, device="cpu").rerank("q", LLM_DOCS)}
    assert raw == pytest.approx(want_raw, abs=1e-6)
    assert normalized == pytest.approx(
        {i: 1 / (1 + math.exp(-s)) for i, s in raw.items()}, abs=1e-6
    )


@pytest.mark.parametrize(
    ("flags", "provider", "named"),
    [
        (["--instruction", "x"], "bge", "instruction (--instruction) is for qwen3, bge-llm, mxb"),
        (["--instruction", "legal"], "cohere", "is for qwen3, bge-llm, mxbai-v2; 'cohere' does"),
        (["--normalize"], "qwen3", "normalize (--normalize) is for bge, bge-llm, mxbai-v2; 'qw"),
        (["--max-length", "64"], "voyage", "max_length (--max-length) is for local rerankers"),
        (["--dtype", "float16"], "jina", "dtype (--dtype) is for local rerankers (bge, "),
        (
            ["--split-special-tokens"],
            "cohere",
            "split_special_tokens (--split-special-tokens) is for local rerankers (bge, ",
        ),
    ],
)
def test_model_options_the_reranker_does_not_take(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    provider: str,
    named: str,
) -> None:
    docs = write_docs(tmp_path / "docs.jsonl", ['{"text": "a"}'])
    beir = str(Path(__file__).resolve().parents[1] / "fixtures" / "beir-mini")
    for command in (["rerank", "q", str(docs)], ["eval", beir], ["serve"]):
        err = error_of([command[0], "--reranker", provider, *flags, *command[1:]], capsys)
        assert named in err, err


def test_serve_and_eval_take_the_model_options(
    llm_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import milvus_rerank.app.evaluate
    import milvus_rerank.app.serve
    from milvus_rerank import Reranker

    seen: list[Reranker] = []

    def capture(reranker: Reranker, *args: object, **options: object) -> int:
        seen.append(reranker)
        return 0

    monkeypatch.setattr(milvus_rerank.app.serve, "run_server", capture)
    monkeypatch.setattr(milvus_rerank.app.evaluate, "run_eval", capture)
    monkeypatch.delenv("MILVUS_RERANK_API_KEY", raising=False)
    beir = str(Path(__file__).resolve().parents[1] / "fixtures" / "beir-mini")
    options = ["--device", "cpu", "--instruction", "be strict", "--max-length", "96"]
    options.append("--split-special-tokens")
    common = ["--reranker", "qwen3", "--model", str(llm_models["qwen3"]), *options]
    assert main(["serve", *common]) == 0
    assert main(["eval", *common, beir]) == 0
    for reranker in seen:
        assert "instruction='be strict'" in repr(reranker) and "max_length=96" in repr(reranker)
        assert "split_special_tokens=True" in repr(reranker)
    assert len(seen) == 2


def test_serve_checks_its_port_before_the_model_loads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the model loaded, a banner said it served, then uvicorn's "ERROR:" and exit 3."""
    import socket

    import milvus_rerank.app.commands

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(milvus_rerank.app.commands, "open_from_args", no_model)
    monkeypatch.delenv("MILVUS_RERANK_API_KEY", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = error_of(["serve", "--port", str(port)], capsys)
    assert err == f"milvus-rerank: error: port {port} on 127.0.0.1 is in use\n"
    foreign = ["serve", "--host", "192.0.2.1", "--insecure-no-auth", "--port", "18019"]
    assert "192.0.2.1: it is not an address of this machine" in error_of(foreign, capsys)
    # A public host without a key is refused first, as before (now before the load too).
    assert "--insecure-no-auth" in error_of(["serve", "--host", "192.0.2.1"], capsys)


def test_run_server_refuses_a_busy_port_before_any_banner(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    from milvus_rerank import ConfigurationError
    from milvus_rerank.app.serve import run_server

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"port {port} on 127.0.0.1 is in use"):
            run_server(ScoreTableReranker(), port=port)
    assert capsys.readouterr().err == ""


#: Runs ``milvus-rerank serve`` over a reranker without a model (argv: when to press Ctrl-C,
#: then the command's flags); "startup" presses it while uvicorn starts.
SERVE_DRIVER = """
import contextlib, os, signal, sys

import uvicorn

import milvus_rerank.app.commands as commands
from milvus_rerank import Reranker
from milvus_rerank.app.cli import main


class Lengths(Reranker):
    def _score(self, query, documents):
        return [float(len(d)) for d in documents]


@contextlib.contextmanager
def opened(args, **kwargs):
    yield Lengths(), False


commands.open_from_args = opened
if sys.argv[1] == "startup":
    startup = uvicorn.Server.startup

    async def interrupted(self, sockets=None):
        os.kill(os.getpid(), signal.SIGINT)
        await startup(self, sockets=sockets)

    uvicorn.Server.startup = interrupted
sys.exit(main(["serve", *sys.argv[2:]]))
"""


def _serve_process(tmp_path: Path, when: str, *flags: str) -> Any:
    """``milvus-rerank serve`` in a child process, its stderr piped (killed after 60 s)."""
    import os
    import subprocess
    import sys
    import threading

    import milvus_rerank

    driver = tmp_path / "serve_driver.py"
    driver.write_text(SERVE_DRIVER, encoding="utf-8")
    source = str(Path(milvus_rerank.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    env.pop("MILVUS_RERANK_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, str(driver), when, *flags],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(60, process.kill)
    watchdog.daemon = True
    watchdog.start()
    return process


def _free_port(family: int = 2, host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGINT"), reason="POSIX signals")
def test_ctrl_c_on_serve_exits_130_with_one_line_also_while_it_starts(tmp_path: Path) -> None:
    """Before: exit 0 without the line once uvicorn ran, a traceback while it started."""
    import signal

    import httpx

    port = _free_port()
    serving = _serve_process(tmp_path, "serving", "--port", str(port))
    banner = serving.stderr.readline()  # printed once the server listens
    assert banner.startswith("milvus-rerank serve: ") and f"127.0.0.1:{port}" in banner
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    serving.send_signal(signal.SIGINT)
    _, err = serving.communicate(timeout=60)
    assert (serving.returncode, err) == (130, "milvus-rerank: interrupted (serve)\n")

    starting = _serve_process(tmp_path, "startup", "--port", str(_free_port()))
    _, err = starting.communicate(timeout=60)
    assert (starting.returncode, err) == (130, "milvus-rerank: interrupted (serve)\n")


def test_serve_on_ipv6_prints_a_usable_url(tmp_path: Path) -> None:
    import signal
    import socket

    import httpx

    try:
        port = _free_port(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    serving = _serve_process(tmp_path, "serving", "--host", "::1", "--port", str(port))
    banner = serving.stderr.readline()
    try:
        assert f" on http://[::1]:{port} " in banner, banner
        assert httpx.get(f"http://[::1]:{port}/health", timeout=10).status_code == 200
    finally:
        serving.send_signal(signal.SIGINT)
        serving.communicate(timeout=60)


def test_the_old_module_path_of_the_command_line_still_runs() -> None:
    """``python -m milvus_rerank.cli`` and console scripts made before the CLI moved."""
    import os
    import subprocess
    import sys

    import milvus_rerank
    from milvus_rerank.cli import main as old_main

    assert old_main is main
    source = str(Path(milvus_rerank.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "milvus_rerank.cli", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"milvus-rerank {__version__}")
