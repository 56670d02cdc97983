"""A large call is tokenized a slice at a time, so a small call's tokenization slips between.

``LocalModelRunner`` holds its tokenizer lock for ``TOKENIZE_SLICE`` pairs at a time (attack16b
F15): the rows are those of one whole call, for every family and both ``long_documents``
modes, and another thread's call takes the lock between two slices of a large one.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from milvus_rerank.providers.local import runner as _local  # noqa: E402
from tests.providers.local.test_local_long_documents import MODES  # noqa: E402
from tests.providers.local.test_passages import FAMILIES, family_dirs, make  # noqa: E402, F401

LONG = "paris is the capital of france. " + "milvus is a vector database, berlin a city. " * 130


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("key", FAMILIES)
def test_sliced_rows_are_the_whole_calls(
    family_dirs: dict[str, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    mode: str,
) -> None:
    reranker = make(family_dirs, key, **MODES[mode])
    runner = reranker.runner
    # Queries change inside and across slices; a long query and long documents are cut.
    queries = [("what is milvus", LONG, "capital of france?")[i // 5 % 3] for i in range(60)]
    documents = [
        (LONG[: 40 * (i + 1)], "", "東京" * 50, LONG, "berlin is a city")[i % 5] for i in range(60)
    ]
    monkeypatch.setattr(_local, "TOKENIZE_SLICE", 10**9)
    whole = runner.prepare(queries, documents)  # truncate: encode_many's rows
    monkeypatch.setattr(_local, "TOKENIZE_SLICE", 7)
    sliced = runner.prepare(queries, documents)
    assert (sliced.rows, sliced.owners, sliced.pairs) == (whole.rows, whole.owners, whole.pairs)
    assert runner.encode_many([], []) == [] and runner.prepare([], []).pairs == 0


class Gate:
    """The runner's tokenizer lock, noting each holder; the small call runs after one slice.

    When the big call first lets go, a thread makes the small call and the big one waits for
    it (30 s at most): a lock held across slices would let it in only after the big call.
    """

    def __init__(self, small: Any) -> None:
        self.lock = threading.Lock()
        self.holders: list[str] = []
        self.small = small
        self.result: list[Any] = []

    def __enter__(self) -> None:
        self.lock.acquire()
        self.holders.append(threading.current_thread().name)

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        if threading.current_thread().name == "big" and self.holders.count("big") == 1:
            thread = threading.Thread(target=lambda: self.result.append(self.small()), name="small")
            thread.start()
            thread.join(30)


def test_a_small_call_is_tokenized_between_slices_of_a_large_one(
    family_dirs: dict[str, Path],  # noqa: F811
) -> None:
    reranker = make(family_dirs, "cross-encoder").load()
    documents = [f"document {i} about paris and milvus" for i in range(2_000)]
    alone = reranker.rerank_response("capital of france", ["paris is the capital of france"])
    gate = Gate(
        lambda: reranker.rerank_response("capital of france", ["paris is the capital of france"])
    )
    reranker.runner._tokenizer_lock = gate
    big: list[Any] = []
    thread = threading.Thread(
        target=lambda: big.append(reranker.rerank_response("what is milvus", documents)),
        name="big",
    )
    thread.start()
    thread.join(120)
    slices = -(-len(documents) // _local.TOKENIZE_SLICE)
    assert gate.holders[:3] == ["big", "small", "big"]  # in between, not after
    assert gate.holders == ["big", "small", *["big"] * (slices - 1)]
    assert [(r.index, r.score) for r in gate.result[0].results] == [
        (r.index, r.score) for r in alone.results
    ]
    assert len(big[0].results) == len(documents)
