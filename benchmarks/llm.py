"""LLM rerankers: ours against sentence-transformers, FlagLLMReranker and a bare forward loop.

Same weights: a Qwen3-shaped checkpoint with the real 151,936-row vocabulary (4 layers, hidden
256) and a Gemma-shaped one with the real 256,000 rows, where the LM head dominates what the
references spend (they project every position onto the whole vocabulary; ours projects the last
position onto the label tokens only). Batch 8, 32 pairs of 40-200 words, CPU, timed in turns
in one process; peak RSS in a fresh process per library.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import Row, bare_loop, interleaved, peak_rss_mib  # noqa: E402

QUERY = "what event in 1956 marked the birth of artificial intelligence as a discipline"
BATCH = 8
PAIRS = 32
#: FlagLLMReranker is slow enough on CPU that fewer pairs keep the run short.
FLAG_PAIRS = 16
SHAPE = {"num_layers": 4, "hidden_size": 256}
QWEN3_VOCAB = 151_936
GEMMA_VOCAB = 256_000


def documents(count: int, seed: int = 0) -> list[str]:
    """Documents of 40 to 200 words of the tiny vocabulary (one token per word)."""
    from milvus_rerank.providers.local.tiny import default_vocabulary

    words = default_vocabulary()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(40, 200))) for _ in range(count)]


def build_checkpoints(root: Path) -> dict[str, Path]:
    from transformers.utils import logging as hf_logging

    from milvus_rerank.providers.local.tiny import (
        QWEN3_RERANKER_CHAT_TEMPLATE,
        build_tiny_gemma_reranker,
        build_tiny_qwen3_reranker,
    )

    hf_logging.disable_progress_bar()
    return {
        # The chat template makes sentence-transformers render the model-card prompt.
        "qwen3": build_tiny_qwen3_reranker(
            root / "qwen3",
            chat_template=QWEN3_RERANKER_CHAT_TEMPLATE,
            vocab_size=QWEN3_VOCAB,
            **SHAPE,
        ),
        "gemma": build_tiny_gemma_reranker(root / "gemma", vocab_size=GEMMA_VOCAB, **SHAPE),
    }


def _peak_rss(library: str, path: Path, count: int) -> float:
    """Peak RSS (MiB) of a fresh process that loads ``library``'s reranker and scores once."""
    return peak_rss_mib(f"""
from benchmarks.llm import documents, QUERY, BATCH
docs = documents({count})
pairs = [(QUERY, d) for d in docs]
library, path = {library!r}, {str(path)!r}
if library == "qwen3":
    from milvus_rerank import Qwen3Reranker
    Qwen3Reranker(path, batch_size=BATCH, device="cpu").rerank(QUERY, docs)
elif library == "bge-llm":
    from milvus_rerank import BGELLMReranker
    BGELLMReranker(path, batch_size=BATCH, device="cpu").rerank(QUERY, docs)
elif library == "st":
    from sentence_transformers import CrossEncoder
    CrossEncoder(path, device="cpu").predict(pairs, batch_size=BATCH, show_progress_bar=False)
else:
    from FlagEmbedding import FlagLLMReranker
    FlagLLMReranker(path, use_fp16=False, devices="cpu").compute_score(pairs, batch_size=BATCH)
""")


def run() -> list[Row]:
    """The LLM-reranker rows."""
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    logging.getLogger("FlagEmbedding").setLevel(logging.ERROR)
    from FlagEmbedding import FlagLLMReranker
    from sentence_transformers import CrossEncoder

    from milvus_rerank import BGELLMReranker, Qwen3Reranker

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="milvus-rerank-bench-llm-") as tmp:
        paths = build_checkpoints(Path(tmp))
        docs = documents(PAIRS)
        pairs = [(QUERY, d) for d in docs]

        qwen3 = Qwen3Reranker(
            str(paths["qwen3"]), batch_size=BATCH, device="cpu", batch_across_calls=False
        ).load()
        st = CrossEncoder(str(paths["qwen3"]), device="cpu")
        times = interleaved(
            {
                "ours": lambda: qwen3.rerank(QUERY, docs),
                "st": lambda: st.predict(pairs, batch_size=BATCH, show_progress_bar=False),
                "bare": bare_loop(qwen3, QUERY, docs),
            },
            repeats=3,
        )
        per_s = {name: PAIRS / seconds for name, seconds in times.items()}
        rows.append(
            Row.at_least(
                f"Qwen3Reranker pairs/s ({PAIRS} pairs, 151,936 vocab)",
                f"{per_s['ours']:.1f}",
                f"{per_s['st']:.1f} (sentence-transformers CausalLM CrossEncoder)",
                per_s["ours"] / per_s["st"],
                1.2,
            )
        )
        rows.append(
            Row.at_least(
                "Qwen3Reranker vs a bare model(**batch) loop, same batches",
                f"{per_s['ours']:.1f}",
                f"{per_s['bare']:.1f} (bare loop)",
                per_s["ours"] / per_s["bare"],
                1.0,
            )
        )

        gemma = BGELLMReranker(
            str(paths["gemma"]), batch_size=BATCH, device="cpu", batch_across_calls=False
        ).load()
        with contextlib.redirect_stderr(io.StringIO()):
            flag = FlagLLMReranker(str(paths["gemma"]), use_fp16=False, devices="cpu")
        few = pairs[:FLAG_PAIRS]

        def flag_score() -> object:
            with contextlib.redirect_stderr(io.StringIO()):
                return flag.compute_score(few, batch_size=BATCH)

        times = interleaved(
            {"ours": lambda: gemma.rerank(QUERY, docs[:FLAG_PAIRS]), "flag": flag_score},
            repeats=2,
        )
        ours_ps, flag_ps = FLAG_PAIRS / times["ours"], FLAG_PAIRS / times["flag"]
        rows.append(
            Row.at_least(
                f"BGELLMReranker pairs/s ({FLAG_PAIRS} pairs, 256,000 vocab)",
                f"{ours_ps:.1f}",
                f"{flag_ps:.1f} (FlagLLMReranker)",
                ours_ps / flag_ps,
                5.0,
            )
        )

        for ours, reference, label, path in (
            ("qwen3", "st", "sentence-transformers", paths["qwen3"]),
            ("bge-llm", "flag", "FlagLLMReranker", paths["gemma"]),
        ):
            ours_mb = _peak_rss(ours, path, FLAG_PAIRS)
            ref_mb = _peak_rss(reference, path, FLAG_PAIRS)
            rows.append(
                Row.report(
                    f"peak RSS, {ours} (fresh process, {FLAG_PAIRS} pairs)",
                    f"{ours_mb:.0f} MiB",
                    f"{ref_mb:.0f} MiB ({label})",
                    ref_mb / ours_mb,
                )
            )
    return rows


if __name__ == "__main__":  # python -m benchmarks.llm (this table alone)
    from benchmarks.common import table

    print(table(run()))
