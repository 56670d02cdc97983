"""Local throughput: our rerankers against sentence-transformers, FlagEmbedding and a bare loop.

Same weights (locally built checkpoints: the ms-marco-MiniLM-L-6-v2 shape for the cross-encoder,
a smaller XLM-R for BGE), same batch size, same torch threads, the same 64 documents of 20-400
tokens, timed in turns in one process. Peak RSS is measured in a fresh process per library.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import Row, bare_loop, interleaved, peak_rss_mib  # noqa: E402

QUERY = "what event in 1956 marked the birth of artificial intelligence as a discipline"
BATCH = 32
#: The shape of cross-encoder/ms-marco-MiniLM-L-6-v2.
MINILM_SHAPE = {"num_layers": 6, "hidden_size": 384, "num_heads": 12, "intermediate_size": 1536}


def documents(count: int, seed: int = 0) -> list[str]:
    """Documents of 20 to 400 words of the tiny vocabulary (one token per word)."""
    from milvus_rerank.providers.local.tiny import default_vocabulary

    words = default_vocabulary()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 400))) for _ in range(count)]


def build_checkpoints(root: Path) -> dict[str, Path]:
    from transformers.utils import logging as hf_logging

    from milvus_rerank.providers.local.tiny import build_tiny_bge, build_tiny_cross_encoder

    hf_logging.disable_progress_bar()
    return {
        "ce": build_tiny_cross_encoder(root / "minilm", activation="identity", **MINILM_SHAPE),
        "bge": build_tiny_bge(
            root / "xlmr", num_layers=4, hidden_size=384, num_heads=12, intermediate_size=1536
        ),
    }


def padded_tokens(reranker: Any, docs: list[str]) -> tuple[int, int, int]:
    """Real tokens, then padded tokens of our schedule and of sentence-transformers' (batches of
    ``BATCH`` after sorting by text length), for the same pairs: where the time goes."""
    runner = reranker.runner
    features = runner.encode_pairs(QUERY, docs)
    lengths = [len(f["input_ids"]) for f in features]
    ours = sum(max(lengths[i] for i in rows) * len(rows) for rows in runner.schedule(features))
    by_text = [lengths[i] for i in sorted(range(len(docs)), key=lambda i: -len(QUERY + docs[i]))]
    reference = sum(
        max(by_text[i : i + BATCH]) * len(by_text[i : i + BATCH])
        for i in range(0, len(by_text), BATCH)
    )
    return sum(lengths), ours, reference


def _peak_rss(kind: str, library: str, path: Path, count: int) -> float:
    """Peak RSS (MiB) of a fresh process that loads ``library``'s reranker and scores once."""
    return peak_rss_mib(f"""
from benchmarks.local import documents, QUERY, BATCH
docs = documents({count})
if {library!r} == "ours":
    from milvus_rerank import CrossEncoderReranker, BGEReranker
    cls = CrossEncoderReranker if {kind!r} == "ce" else BGEReranker
    cls({str(path)!r}, batch_size=BATCH, device="cpu").rerank(QUERY, docs)
elif {kind!r} == "ce":
    from sentence_transformers import CrossEncoder
    CrossEncoder({str(path)!r}, device="cpu").predict([(QUERY, d) for d in docs], batch_size=BATCH)
else:
    from FlagEmbedding import FlagReranker
    FlagReranker({str(path)!r}, use_fp16=False, devices="cpu").compute_score(
        [(QUERY, d) for d in docs], batch_size=BATCH)
""")


def run(counts: tuple[int, ...] = (8, 16, 32, 64, 128)) -> tuple[list[Row], dict[str, Any]]:
    """The local rows, and throughput by document count for the plot."""
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    import torch
    from FlagEmbedding import FlagReranker
    from sentence_transformers import CrossEncoder

    from milvus_rerank import BGEReranker, CrossEncoderReranker

    root = Path(tempfile.mkdtemp(prefix="milvus-rerank-bench-"))
    paths = build_checkpoints(root)
    docs = documents(64)
    pairs = [(QUERY, d) for d in docs]
    # One call at a time, on the caller's thread like the references: under CPU contention,
    # OpenMP's spin-waiting makes the main thread slower than a fresh one, which would flatter
    # the shared batcher's worker thread (measured in benchmarks/batching.py instead).
    ours_ce = CrossEncoderReranker(
        str(paths["ce"]), batch_size=BATCH, device="cpu", batch_across_calls=False
    )
    ours_bge = BGEReranker(
        str(paths["bge"]), batch_size=BATCH, device="cpu", batch_across_calls=False
    )
    st = CrossEncoder(str(paths["ce"]), device="cpu")
    flag = FlagReranker(str(paths["bge"]), use_fp16=False, devices="cpu", batch_size=BATCH)
    quiet = {"show_progress_bar": False}

    def flag_score(pairs: list[tuple[str, str]]) -> Any:
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bar cannot be turned off
            return flag.compute_score(pairs, batch_size=BATCH)

    ce_times = interleaved(
        {
            "ours": lambda: ours_ce.rerank(QUERY, docs),
            "st": lambda: st.predict(pairs, batch_size=BATCH, **quiet),
            "bare": bare_loop(ours_ce, QUERY, docs),
        },
        repeats=3,
    )
    bge_times = interleaved(
        {
            "ours": lambda: ours_bge.rerank(QUERY, docs),
            "flag": lambda: flag_score(pairs),
            "bare": bare_loop(ours_bge, QUERY, docs),
        },
        repeats=3,
    )
    n = len(docs)

    def pps(seconds: float) -> str:
        return f"{n / seconds:.1f} pairs/s"

    rows = [
        Row.at_least(
            "CrossEncoderReranker vs sentence-transformers CrossEncoder.predict",
            pps(ce_times["ours"]),
            pps(ce_times["st"]),
            ce_times["st"] / ce_times["ours"],
            1.5,
        ),
        Row.at_least(
            "CrossEncoderReranker vs bare model(**batch) loop",
            pps(ce_times["ours"]),
            pps(ce_times["bare"]),
            ce_times["bare"] / ce_times["ours"],
            0.9,
        ),
        Row.at_least(
            "BGEReranker vs FlagEmbedding FlagReranker.compute_score",
            pps(bge_times["ours"]),
            pps(bge_times["flag"]),
            bge_times["flag"] / bge_times["ours"],
            1.5,
        ),
        Row.at_least(
            "BGEReranker vs bare model(**batch) loop",
            pps(bge_times["ours"]),
            pps(bge_times["bare"]),
            bge_times["bare"] / bge_times["ours"],
            0.9,
        ),
    ]
    real, ours_padded, st_padded = padded_tokens(ours_ce, docs)
    rows.append(
        Row.report(
            "  why: padded tokens through the model, ours vs sentence-transformers",
            f"{ours_padded} ({ours_padded / real - 1:.0%} pad)",
            f"{st_padded} ({st_padded / real - 1:.0%} pad)",
            st_padded / ours_padded,
        )
    )
    for kind, reference in (("ce", "sentence-transformers"), ("bge", "FlagEmbedding")):
        ours_mb = _peak_rss(kind, "ours", paths[kind], 64)
        ref_mb = _peak_rss(kind, "reference", paths[kind], 64)
        rows.append(
            Row.report(
                f"peak RSS, {'cross-encoder' if kind == 'ce' else 'BGE'} (fresh process)",
                f"{ours_mb:.0f} MiB",
                f"{ref_mb:.0f} MiB ({reference})",
                ref_mb / ours_mb,
            )
        )

    curve: dict[str, Any] = {"counts": list(counts), "threads": torch.get_num_threads()}
    for label, fn in (
        ("CrossEncoderReranker", lambda d: ours_ce.rerank(QUERY, d)),
        (
            "sentence-transformers",
            lambda d: st.predict([(QUERY, x) for x in d], batch_size=BATCH, **quiet),
        ),
        ("BGEReranker", lambda d: ours_bge.rerank(QUERY, d)),
        ("FlagEmbedding", lambda d: flag_score([(QUERY, x) for x in d])),
    ):
        curve[label] = []
        for count in counts:
            subset = documents(count, seed=count)
            seconds = interleaved({"x": lambda s=subset, f=fn: f(s)}, repeats=1)["x"]
            curve[label].append(count / seconds)
    return rows, curve
