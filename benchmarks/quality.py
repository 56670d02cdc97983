"""What int8 costs in ranking: a cross-encoder trained here, and random models of real shapes.

Random weights say nothing about quantization loss on a task, so a small BERT cross-encoder
(2 layers, hidden 128) is trained here for a minute or two on a synthetic graded-relevance task:
twelve topics of eight words; a query is two words of a topic; a document holds 0 to 6 other
words of that topic (its grade), up to 3 of other topics, and fillers. Held-out queries
(word pairs never trained on) are then ranked by ours on ONNX Runtime, fp32 and int8: the
nDCG@10 each reaches, and the loss. Rank agreement (Spearman) of int8 with
fp32 is also given on random models of the real shapes: MiniLM-L12 and bge-reranker-base's XLM-R.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Row
from benchmarks.onnx_files import (
    QUERY,
    XLMR_BASE,
    build_minilm_l12,
    documents,
    temporary_cache,
)

SMALL = {"num_layers": 2, "hidden_size": 128, "num_heads": 4, "intermediate_size": 512}
QUERY_WORDS = 2
GRADES = 6
TOPICS = 12
TOPIC_WORDS = 8
CANDIDATES = 30
HELD_OUT = 60
#: Training steps, and a cap on its time for a machine under load.
TRAIN_STEPS = 700
TRAIN_SECONDS = 300.0
BATCH = 32
LEARNING_RATE = 1e-3


def _words() -> list[str]:
    from milvus_rerank.providers.local.tiny import default_vocabulary

    return default_vocabulary()


def topics() -> list[list[str]]:
    """``TOPICS`` disjoint sets of ``TOPIC_WORDS`` words; the rest of the vocabulary is filler."""
    words = _words()
    return [words[i * TOPIC_WORDS : (i + 1) * TOPIC_WORDS] for i in range(TOPICS)]


def example(rng: random.Random, query: list[str], grade: int) -> str:
    """A document holding ``grade`` words of the query's topic, up to 3 words of other topics
    (distractors) and 8 to 24 fillers."""
    words = _words()
    topic = next(t for t in topics() if query[0] in t)
    others = [w for t in topics() if t is not topic for w in t]
    fillers = words[TOPICS * TOPIC_WORDS :]
    chosen = rng.sample(topic, grade) + rng.sample(others, rng.randint(0, 3))
    chosen += [rng.choice(fillers) for _ in range(rng.randint(8, 24))]
    rng.shuffle(chosen)
    return " ".join(chosen)


def query_of(rng: random.Random) -> list[str]:
    """Two words of one topic."""
    return rng.sample(rng.choice(topics()), QUERY_WORDS)


def train(path: Path, steps: int = TRAIN_STEPS, seconds: float = TRAIN_SECONDS) -> dict[str, Any]:
    """Train a small cross-encoder on the graded task (mean squared error on the grade); save it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from milvus_rerank.providers.local.loading import quiet_progress
    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

    hf_logging.disable_progress_bar()
    build_tiny_cross_encoder(path, activation="identity", **SMALL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model.train()
    threads = torch.get_num_threads()
    # One thread: on a loaded machine, OpenMP workers waiting on each other cost more than the
    # second core gives to a model this small.
    torch.set_num_threads(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    rng = random.Random(1)
    held = {" ".join(sorted(q)) for q in held_out_queries()}
    started, step, loss_value = time.perf_counter(), 0, math.nan
    while step < steps and time.perf_counter() - started < seconds:
        queries, docs, grades = [], [], []
        while len(queries) < BATCH:
            query = query_of(rng)
            if " ".join(sorted(query)) in held:
                continue
            grade = rng.randint(0, GRADES)
            queries.append(" ".join(query))
            docs.append(example(rng, query, grade))
            grades.append(float(grade))
        batch = tokenizer(queries, docs, padding=True, return_tensors="pt")
        logits = model(**batch).logits.squeeze(-1)
        loss = torch.nn.functional.mse_loss(logits, torch.tensor(grades))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step, loss_value = step + 1, loss.item()
    torch.set_num_threads(threads)
    with quiet_progress():  # no "Writing model shards" bar
        model.eval().save_pretrained(path)
    return {"steps": step, "seconds": time.perf_counter() - started, "loss": loss_value}


def held_out_queries() -> list[list[str]]:
    rng = random.Random(7)
    return [query_of(rng) for _ in range(HELD_OUT)]


def held_out() -> list[tuple[str, list[str], list[int]]]:
    """Each held-out query with its candidates and their grades."""
    rng = random.Random(8)
    out = []
    for query in held_out_queries():
        grades = [rng.randint(0, GRADES) for _ in range(CANDIDATES)]
        out.append((" ".join(query), [example(rng, query, g) for g in grades], grades))
    return out


def ndcg_at_10(order: list[int], grades: list[int]) -> float:
    """nDCG@10 of ``order`` (candidate indices, best first) with gains 2^grade - 1."""

    def dcg(gains: list[int]) -> float:
        return sum((2**g - 1) / math.log2(rank + 2) for rank, g in enumerate(gains[:10]))

    ideal = dcg(sorted(grades, reverse=True))
    return dcg([grades[i] for i in order]) / ideal if ideal else 0.0


def mean_ndcg(reranker: Any, data: list[tuple[str, list[str], list[int]]]) -> float:
    total = 0.0
    for query, docs, grades in data:
        total += ndcg_at_10([r.index for r in reranker.rerank(query, docs)], grades)
    return total / len(data)


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _ours(cls: Any, path: Path, **options: Any) -> Any:
    return cls(str(path), device="cpu", batch_across_calls=False, **options).load()


def _trained_rows(root: Path) -> list[Row]:
    from milvus_rerank import CrossEncoderReranker

    trained = train(root / "trained")
    data = held_out()
    fp32 = _ours(CrossEncoderReranker, root / "trained", backend="onnx")
    int8 = _ours(CrossEncoderReranker, root / "trained", backend="onnx", quantization="int8")
    ndcg_fp32, ndcg_int8 = mean_ndcg(fp32, data), mean_ndcg(int8, data)
    rng = random.Random(3)
    shuffled = sum(ndcg_at_10(rng.sample(range(len(g)), len(g)), g) for _, _, g in data) / len(data)
    note = f"{trained['steps']} steps in {trained['seconds']:.0f} s, loss {trained['loss']:.3f}"
    return [
        Row.report(
            f"trained cross-encoder ({note}): nDCG@10, onnx fp32 vs a random order",
            f"{ndcg_fp32:.4f}",
            f"{shuffled:.4f} (random order)",
            ndcg_fp32 / shuffled,
        ),
        Row.at_most(
            f"  int8 nDCG@10 loss vs fp32 ({HELD_OUT} held-out queries x {CANDIDATES}), "
            "over the 0.01 bound",
            f"{ndcg_int8:.4f} (int8; loss {ndcg_fp32 - ndcg_int8:+.4f})",
            f"{ndcg_fp32:.4f} (fp32)",
            max(ndcg_fp32 - ndcg_int8, 0.0) / 0.01,
            1.0,
        ),
    ]


def _agreement_rows(root: Path) -> list[Row]:
    from milvus_rerank import BGEReranker, CrossEncoderReranker
    from milvus_rerank.providers.local.tiny import build_tiny_bge

    models = {
        "MiniLM-L12 (random)": (CrossEncoderReranker, build_minilm_l12(root / "minilm-l12")),
        "bge-reranker-base shape, XLM-R (random)": (
            BGEReranker,
            build_tiny_bge(root / "xlmr-base", **XLMR_BASE),
        ),
    }
    docs = documents(64, seed=5)
    rows = []
    for label, (cls, path) in models.items():
        fp32 = _ours(cls, path, backend="onnx")
        int8 = _ours(cls, path, backend="onnx", quantization="int8")
        a = fp32.score_pairs([QUERY] * len(docs), docs)
        b = int8.score_pairs([QUERY] * len(docs), docs)
        rho = spearman(a, b)
        rows.append(
            Row.report(
                f"int8 vs fp32 rank agreement (Spearman, 64 docs), {label}",
                f"{rho:.4f}",
                "1.0 (identical order)",
                rho,
            )
        )
    return rows


def run() -> list[Row]:
    """The int8 quality rows."""
    import logging

    logging.getLogger("milvus_rerank").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="milvus-rerank-bench-quality-") as tmp:
        root = Path(tmp)
        with temporary_cache(root / "cache"):
            return _trained_rows(root) + _agreement_rows(root)


if __name__ == "__main__":  # python -m benchmarks.quality (this table alone)
    from benchmarks.common import table

    print(table(run()))
