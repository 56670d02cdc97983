"""The CPU fast path: ours on ONNX Runtime (fp32, int8) against ours on torch and the ONNX peers.

A random cross-encoder of the ms-marco-MiniLM-L12-v2 shape (12 layers, hidden 384, BERT's
30,522 vocabulary rows), 64 documents of 16-256 words, the same pairs for every row, timed in
turns in one process. Ours exports and quantizes once, into a temporary cache; FlashRank and a
bare ``session.run`` loop are handed those very files. Load time and peak RSS come from a fresh
process per backend, with that cache warm.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Row, fresh_process, interleaved
from benchmarks.onnx_files import (
    CACHE_ENV,
    QUERY,
    build_minilm_l12,
    documents,
    flashrank_cache,
    flashrank_ranker,
    flashrank_rerank,
    plain_loop,
    temporary_cache,
    why_not_fastembed,
    why_not_sentence_transformers_onnx,
)

DOCS = 64
BACKENDS: dict[str, dict[str, Any]] = {
    "torch fp32": {},
    "onnx fp32": {"backend": "onnx"},
    "onnx int8": {"backend": "onnx", "quantization": "int8"},
}
#: The same graphs shipped in the model's ``onnx/`` folder (no export): as installed beside
#: torch (transformers imports it where it is installed), and without torch (``[onnx]`` alone).
SHIPPED: dict[str, dict[str, Any]] = {
    "onnx int8, shipped file": {"backend": "onnx", "onnx_file": "onnx/model_qint8.onnx"},
    "onnx fp32, shipped file, without torch": {"backend": "onnx"},
    "onnx int8, shipped file, without torch": {
        "backend": "onnx",
        "onnx_file": "onnx/model_qint8.onnx",
    },
}


def ours(path: Path, **options: Any) -> Any:
    """Our cross-encoder over ``path``, loaded; one call at a time, on the caller's thread."""
    from milvus_rerank import CrossEncoderReranker

    return CrossEncoderReranker(str(path), device="cpu", batch_across_calls=False, **options).load()


def onnx_file(reranker: Any) -> Path:
    """The ONNX file an ONNX-backed reranker runs."""
    return Path(reranker.runner.load().model.scorer.path)


def _fresh(backend: str, path: Path, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load time (import included), peak RSS, and whether torch was imported, of one backend.

    ``path`` is the model directory, or FlashRank's cache for ``"flashrank"``. A backend named
    ``...without torch`` runs where ``import torch`` fails, as in an ``[onnx]``-only install.
    """
    no_torch = "without torch" in backend
    return fresh_process(
        f"""
import sys, time
if {no_torch!r}:
    sys.modules["torch"] = None  # `import torch` raises ImportError, as where it is absent
from benchmarks.onnx_files import QUERY, documents
docs = documents({DOCS})
started = time.perf_counter()
if {backend!r} == "flashrank":
    from benchmarks.onnx_files import flashrank_ranker, flashrank_rerank
    ranker = flashrank_ranker({str(path)!r})
    report["load_s"] = time.perf_counter() - started
    flashrank_rerank(ranker, docs)
else:
    from milvus_rerank import CrossEncoderReranker
    reranker = CrossEncoderReranker({str(path)!r}, device="cpu", **{options or {}!r})
    reranker.load()
    report["load_s"] = time.perf_counter() - started
    reranker.rerank(QUERY, docs)
report["torch"] = sys.modules.get("torch") is not None
""",
        env={CACHE_ENV: os.environ[CACHE_ENV]},
    )


def _speed_rows(times: dict[str, float]) -> list[Row]:
    def pps(name: str) -> str:
        return f"{DOCS / times[name]:.1f} pairs/s"

    def faster(name: str, than: str) -> float:
        return times[than] / times[name]

    return [
        Row.at_least(
            "onnx fp32 vs torch fp32 (ours, MiniLM-L12 shape, 64 docs)",
            pps("onnx fp32"),
            pps("torch fp32"),
            faster("onnx fp32", "torch fp32"),
            1.0,
        ),
        Row.at_least(
            "onnx int8 vs torch fp32 (ours)",
            pps("onnx int8"),
            pps("torch fp32"),
            faster("onnx int8", "torch fp32"),
            1.8,
        ),
        Row.at_least(
            "onnx int8 vs FlashRank Ranker.rerank, same int8 file",
            pps("onnx int8"),
            pps("flashrank"),
            faster("onnx int8", "flashrank"),
            2.0,
        ),
        Row.at_least(
            "onnx int8 vs bare session.run loop, same file and batches",
            pps("onnx int8"),
            pps("bare int8"),
            faster("onnx int8", "bare int8"),
            0.9,
        ),
    ]


def _peer_rows() -> list[Row]:
    rows = []
    for figure, why in (
        (
            "vs sentence-transformers CrossEncoder(backend='onnx')",
            why_not_sentence_transformers_onnx(),
        ),
        ("vs fastembed TextCrossEncoder", why_not_fastembed()),
    ):
        rows.append(Row.skipped(figure, why or "installed, not wired into this bench yet"))
    return rows


def _parity_row(torch_fp32: Any, onnx_fp32: Any, docs: list[str]) -> Row:
    a = torch_fp32.score_pairs([QUERY] * len(docs), docs)
    b = onnx_fp32.score_pairs([QUERY] * len(docs), docs)
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    return Row.at_most(
        "onnx fp32 scores vs torch fp32: largest difference, over the 1e-4 bound",
        f"{diff:.1e}",
        "1e-4",
        diff / 1e-4,
        1.0,
    )


def shipped(path: Path, fp32: Path, int8: Path, out: Path) -> Path:
    """A copy of the model directory that ships its ONNX files, as Hugging Face repos do."""
    shutil.copytree(path, out)
    (out / "onnx").mkdir()
    shutil.copyfile(fp32, out / "onnx" / "model.onnx")
    shutil.copyfile(int8, out / "onnx" / "model_qint8.onnx")
    return out


def _load_rows(paths: dict[str, Path], first: dict[str, float]) -> list[Row]:
    got = {name: _fresh(name, paths["model"], options) for name, options in BACKENDS.items()}
    for name, options in SHIPPED.items():
        got[name] = _fresh(name, paths["shipped"], options)
    got["flashrank"] = _fresh("flashrank", paths["flashrank"])
    base = got["torch fp32"]

    def cell(name: str) -> str:
        torch_note = ", torch imported" if got[name]["torch"] else ", no torch"
        return f"{got[name]['load_s']:.1f} s, {got[name]['rss_mib']:.0f} MiB{torch_note}"

    rows = [
        Row.report(
            f"load (imports included), peak RSS: {name} (fresh process, warm cache)",
            cell(name),
            cell("torch fp32") + " (torch fp32)",
            base["rss_mib"] / got[name]["rss_mib"],
        )
        for name in ("onnx fp32", "onnx int8", *SHIPPED, "flashrank")
    ]
    rows.append(
        Row.report(
            "first onnx load: export (torch), then int8 quantization, once per model",
            f"{first['onnx fp32']:.1f} s",
            f"{first['onnx int8']:.1f} s (int8, export cached)",
            first["onnx int8"] / first["onnx fp32"],
        )
    )
    return rows


def _measure(root: Path) -> list[Row]:
    """Build the model, load every backend, time them in turns, then the fresh processes."""
    path = build_minilm_l12(root / "minilm-l12")
    docs = documents(DOCS)
    loaded: dict[str, Any] = {}
    first: dict[str, float] = {}
    for name, options in BACKENDS.items():
        started = time.perf_counter()
        loaded[name] = ours(path, **options)
        first[name] = time.perf_counter() - started
    int8_file = onnx_file(loaded["onnx int8"])
    paths = {
        "model": path,
        "shipped": shipped(path, onnx_file(loaded["onnx fp32"]), int8_file, root / "shipped"),
        "flashrank": flashrank_cache(path, int8_file, root / "flashrank"),
    }
    flash = flashrank_ranker(paths["flashrank"])
    fns = {name: (lambda r=r: r.rerank(QUERY, docs)) for name, r in loaded.items()}
    fns["flashrank"] = lambda: flashrank_rerank(flash, docs)
    fns["bare int8"] = plain_loop(loaded["torch fp32"], int8_file, docs)
    times = interleaved(fns, repeats=5)
    rows = _speed_rows(times)
    rows += _peer_rows()
    rows.append(_parity_row(loaded["torch fp32"], loaded["onnx fp32"], docs))
    rows += _load_rows(paths, first)
    return rows


def run() -> list[Row]:
    """The ONNX rows: speed, parity, peers, load and memory."""
    import logging

    logging.getLogger("milvus_rerank").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="milvus-rerank-bench-onnx-") as tmp:
        root = Path(tmp)
        with temporary_cache(root / "cache"):
            return _measure(root)


if __name__ == "__main__":  # python -m benchmarks.onnx (this table alone)
    from benchmarks.common import table

    print(table(run()))
