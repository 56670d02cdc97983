"""Timing helpers and the result table shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


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

    def ratio_text(self) -> str:
        """Two decimals, or three where two would round a miss onto its bound (or a pass)."""
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
            "pass" if self.ok else "MISS",
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
