"""``make bench``: run every benchmark, print one table, write docs/benchmarks.md and the plot.

``python -m benchmarks SECTION...`` runs only those sections (``onnx``, ``quality``,
``llm-int8``...) and prints their table, writing nothing. ``ray`` (the Ray Serve rows: needs
``ray[serve]``, ``make test-ray`` installs it) runs only when named.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Callable  # noqa: E402

from benchmarks import (  # noqa: E402
    adapters,
    batching,
    http,
    llm,
    llm_int8,
    local,
    onnx,
    quality,
    serve_limits,
    serve_load,
)
from benchmarks.common import Row, table  # noqa: E402

#: The sections after the local throughput one (which also draws the plot), in order.
SECTIONS: dict[str, tuple[str, Callable[[], list[Row]]]] = {
    "batching": ("batching across callers", batching.run),
    "llm": ("LLM rerankers", llm.run),
    "onnx": ("ONNX Runtime backend", onnx.run),
    "quality": ("int8 quality", quality.run),
    "llm-int8": ("LLM rerankers in int8", llm_int8.run),
    "http": ("http concurrency", http.run),
    "adapters": ("adapter overhead", adapters.run),
    "serve-load": ("serve under load", serve_load.run),
    "serve-limits": ("serve limits", serve_limits.run),
}


def _ray_rows() -> list[Row]:
    from benchmarks import ray_serve

    return ray_serve.run()


#: Sections run only when named: they need what ``make install`` does not bring.
NAMED_ONLY: dict[str, tuple[str, Callable[[], list[Row]]]] = {
    "ray": ("Ray Serve", _ray_rows),
}

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def machine() -> str:
    import torch

    return (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def plot(curve: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = curve["counts"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {
        "CrossEncoderReranker": ("C0", "-"),
        "sentence-transformers": ("C0", "--"),
        "BGEReranker": ("C1", "-"),
        "FlagEmbedding": ("C1", "--"),
    }
    for label, (color, style) in styles.items():
        ax.plot(counts, curve[label], style, color=color, marker="o", label=label)  # type: ignore[arg-type]
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts)  # type: ignore[arg-type]
    ax.set_xticklabels([str(c) for c in counts])  # type: ignore[union-attr]
    ax.set_xlabel("documents per rerank call (20-400 tokens each)")
    ax.set_ylabel("pairs per second (CPU)")
    ax.set_title("Local rerankers vs their reference implementations, same weights")
    ax.grid(alpha=0.3)
    top = max(max(curve[label]) for label in styles)  # type: ignore[call-overload]
    ax.set_ylim(0, top * 1.35)
    ax.legend(ncol=2, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str]) -> int:
    """Run the sections named in ``argv`` (print only), or all of them (print and write docs)."""
    if argv:
        named = {**SECTIONS, **NAMED_ONLY}
        unknown = [name for name in argv if name not in named]
        if unknown:
            print(f"unknown section(s) {unknown}; choose from {list(named)}", file=sys.stderr)
            return 2
        started = time.perf_counter()
        print(table([row for name in argv for row in named[name][1]()]))
        print(f"Measured on {machine()}, in {time.perf_counter() - started:.0f} s.")
        return 0
    started = time.perf_counter()
    rows: list[Row] = []
    print("local throughput...", file=sys.stderr)
    local_rows, curve = local.run()
    rows += local_rows
    for label, run in SECTIONS.values():
        print(f"{label}...", file=sys.stderr)
        rows += run()
    text = table(rows)
    print(text)
    info = f"Measured on {machine()}, in {time.perf_counter() - started:.0f} s."
    print(info)
    DOCS.mkdir(exist_ok=True)
    plot(curve, DOCS / "throughput.png")
    (DOCS / "benchmarks.md").write_text(
        f"# Benchmarks\n\n{info}\n\n{text}\n\n![throughput](throughput.png)\n"
    )
    update_readme(f"{info}\n\n{text}\n\n![throughput](docs/throughput.png)")
    return 0


def update_readme(block: str) -> None:
    """Put the last table between the README's bench markers, so the README shows this run."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        tail = rest.split(README_END, 1)[1]
        readme.write_text(f"{head}{README_START}\n{block}\n{README_END}{tail}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
