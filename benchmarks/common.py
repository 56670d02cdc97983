"""Timing helpers and the result table shared by the benchmarks."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One figure: ours against its reference, as a ratio, with its target."""

    figure: str
    ours: str
    reference: str
    ratio: float
    target: str
    ok: bool
    bound: float | None = None

    @classmethod
    def at_least(cls, figure: str, ours: str, reference: str, ratio: float, bound: float) -> Row:
        """A figure whose ratio must reach ``bound`` (ours over the reference: higher wins)."""
        return cls(figure, ours, reference, ratio, f">= {bound}x", ratio >= bound, bound)

    @classmethod
    def at_most(cls, figure: str, ours: str, reference: str, ratio: float, bound: float) -> Row:
        """A figure whose ratio must stay at or under ``bound`` (a cost: lower wins)."""
        return cls(figure, ours, reference, ratio, f"<= {bound}x", ratio <= bound, bound)

    @classmethod
    def report(cls, figure: str, ours: str, reference: str, ratio: float) -> Row:
        """A figure shown for context, with no target."""
        return cls(figure, ours, reference, ratio, "report", True)

    @classmethod
    def skipped(cls, figure: str, why: str) -> Row:
        """A figure that could not be measured here, and why (no ratio, no verdict)."""
        return cls(figure, "not run", why, math.nan, "n/a", True)

    def ratio_text(self) -> str:
        """Two decimals, or three where two would round a miss onto its bound (or a pass)."""
        if math.isnan(self.ratio):
            return "-"
        text = f"{self.ratio:.2f}"
        if self.bound is not None and float(text) == self.bound:
            text = f"{self.ratio:.3f}"
        return f"{text}x"

    def cells(self) -> list[str]:
        return [
            self.figure,
            self.ours,
            self.reference,
            self.ratio_text(),
            self.target,
            "-" if self.target == "n/a" else "pass" if self.ok else "MISS",
        ]


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Median seconds of each function, run in turns (A B C A B C ...) so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def table(rows: list[Row]) -> str:
    """A markdown table of the rows."""
    head = ["figure", "ours", "reference", "ratio", "target", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def bare_loop(reranker: Any, query: str, docs: list[str]) -> Callable[[], None]:
    """``model(**batch)`` over the same pre-tokenized, length-sorted batches ours runs."""
    import torch

    runner = reranker.runner
    loaded = runner.load()
    features = runner.encode_pairs(query, docs)
    batches = [runner.collate([features[i] for i in rows]) for rows in runner.schedule(features)]

    def run() -> None:
        with torch.inference_mode():
            for batch in batches:
                loaded.model(**batch)

    return run


def peak_rss_mib(script: str) -> float:
    """Peak RSS (MiB) of a fresh Python process that runs ``script`` from the repository root."""
    return float(fresh_process(script)["rss_mib"])


def fresh_process(script: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``script`` in a fresh Python process from the repository root: its peak RSS (MiB) as
    ``rss_mib``, plus whatever it left in the dict ``report`` (``env`` adds variables)."""
    import os

    code = f"""
report = {{}}
import json, os, resource, logging
logging.disable(logging.WARNING)
os.environ["HF_HUB_OFFLINE"] = "1"
{script}
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
report["rss_mib"] = (int(hwm[0].split()[1]) / 1024 if hwm else
                     resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(report))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, **(env or {})},
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result
