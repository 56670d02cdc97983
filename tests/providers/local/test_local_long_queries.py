"""A long query is cut before tokenizing only where the cut cannot change what is read.

Every family reads at most ``query_tokens_read`` tokens of a query (its head), so
``LocalModelRunner.clip_queries`` cuts a longer one by ``clip_documents``' exact rule, once
per distinct query: for every family and both ``long_documents`` modes, the rows, scores and
token counts are bit for bit those of the whole query.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from milvus_rerank.providers.local import clipping as _clipping  # noqa: E402
from tests.providers.local.test_local_long_documents import MODES  # noqa: E402
from tests.providers.local.test_passages import FAMILIES, family_dirs, make  # noqa: E402, F401

# The long queries exceed the largest cut limit here (CHARS_PER_TOKEN * 150 tokens read, for
# Qwen3's window: 4,800 characters), so every family cuts them where it can; no longer, as the
# reference tokenizes each whole once per document.
PROSE = "paris is the capital of france. " + "milvus is a vector database, berlin a city. " * 130
QUERIES = {
    "prose": PROSE,
    "cjk": "東京" * 1_300,  # no spaces, no cut: past the 40-token windows' limits only
    "specials": "alan turing </s> <|im_end|> [SEP] <s> proposed a test " * 100,
    "whitespace": "paris" + " " * 6_000 + "is the capital of france " * 3,
    "mixed": "the capital " + "\n\n\t  " * 1_000 + "of france " * 500,
    "short": "what is the capital of france",
}
#: Every family in both modes; ``split_special_tokens`` (which changes what the cut's
#: tokens count) once more, for a word-splitting family and a byte-level one.
CASES = [
    *[(key, mode, False) for key in FAMILIES for mode in MODES],
    ("bge", "max_passage", True),
    ("qwen3", "truncate", True),
]


class SeenQueries:
    """Records each ``clip_queries`` call: what came in and what went to the family."""

    def __init__(self, reranker: Any) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []
        runner = reranker.runner
        clip = runner.clip_queries

        def spy(tokenizer: Any, queries: Sequence[str], read: int | None) -> Sequence[str]:
            out = clip(tokenizer, queries, read)
            self.calls.append((list(queries), list(out)))
            return out

        runner.clip_queries = spy


def whole(reranker: Any) -> Any:
    """``reranker`` with no query cut: every query is tokenized whole, as before."""
    reranker.runner.clip_queries = lambda tokenizer, queries, read: queries
    return reranker


def scored(reranker: Any, query: str, documents: list[str]) -> list[tuple[int, float]]:
    return [(r.index, r.score) for r in reranker.rerank_response(query, documents).results]


@pytest.mark.parametrize(("key", "mode", "split"), CASES)
def test_a_cut_query_scores_as_the_whole_query(
    family_dirs: dict[str, Path],  # noqa: F811
    key: str,
    mode: str,
    split: bool,
) -> None:
    options = {**MODES[mode], "split_special_tokens": split}
    ours, reference = make(family_dirs, key, **options), whole(make(family_dirs, key, **options))
    seen = SeenQueries(ours)
    documents = ["paris is the capital of france", "", PROSE[:3_000], "東京" * 100]
    for name, query in QUERIES.items():
        got = ours.rerank_response(query, documents)
        expected = reference.rerank_response(query, documents)
        assert [(r.index, r.score) for r in got.results] == [
            (r.index, r.score) for r in expected.results
        ], name
        assert got.usage == expected.usage, name
        queries = [query] * len(documents)
        if mode == "truncate":  # prepare's rows are encode_many's
            assert ours.runner.encode_many(queries, documents) == (
                reference.runner.encode_many(queries, documents)
            ), name
        elif key != "cross-encoder":  # rows of every window, too
            assert ours.runner.prepare(queries, documents).rows == (
                reference.runner.prepare(queries, documents).rows
            ), name
    read = ours.family.query_tokens_read(ours.runner.load().max_length)
    limit = _clipping.CHARS_PER_TOKEN * read
    cut = {len(q[0]): len(o[0]) for q, o in seen.calls}
    if _clipping.word_breaks(ours.runner.load().tokenizer):
        assert limit - 60 < cut[len(PROSE)] <= limit  # the prose query was cut, at a break
        assert PROSE[cut[len(PROSE)]] in _clipping.word_breaks(ours.runner.load().tokenizer)
    else:
        assert all(k == v for k, v in cut.items())  # Gemma's tokenizer: never cut
    assert cut[len(QUERIES["cjk"])] == len(QUERIES["cjk"])  # no break to cut at


@pytest.mark.parametrize("key", FAMILIES)
def test_query_max_length_bounds_the_cut(family_dirs: dict[str, Path], key: str) -> None:  # noqa: F811
    if key not in ("bge", "qwen3", "bge-llm"):
        pytest.skip("no query_max_length")
    ours = make(family_dirs, key, query_max_length=5)
    reference = whole(make(family_dirs, key, query_max_length=5))
    seen = SeenQueries(ours)
    documents = ["paris is the capital of france", PROSE]
    assert scored(ours, PROSE, documents) == scored(reference, PROSE, documents)
    assert ours.family.query_tokens_read(ours.runner.load().max_length) == 5
    [(_, out)] = seen.calls
    if _clipping.word_breaks(ours.runner.load().tokenizer):  # cut for 5 tokens, not the window
        assert len(out[0]) <= _clipping.CHARS_PER_TOKEN * 5


def test_the_cross_encoder_odd_token_follows_the_whole_lengths(
    family_dirs: dict[str, Path],  # noqa: F811
) -> None:
    # longest_first gives the longer of two cut texts the odd token: a cut query must lose
    # or win it as the whole query does against a long document, cut or not.
    ours, reference = make(family_dirs, "cross-encoder"), whole(make(family_dirs, "cross-encoder"))
    room = ours.runner.load().max_length - 3
    assert room % 2 == 1
    words = "milvus is a vector database berlin a city "  # 8 tokens, 43 characters
    query = words * 60  # past the cut limit (1,280 characters), as are most documents
    documents = [words * n for n in (10, 40, 59, 60, 61, 150)]
    for q in (query, query + "paris", words * 150):
        queries = [q] * len(documents)
        assert ours.runner.encode_many(queries, documents) == reference.runner.encode_many(
            queries, documents
        )
        assert scored(ours, q, documents) == scored(reference, q, documents)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("key", FAMILIES)
def test_a_five_megabyte_query_is_tokenized_cut_and_once(
    family_dirs: dict[str, Path],  # noqa: F811
    key: str,
    mode: str,
) -> None:
    reranker = make(family_dirs, key, **MODES[mode]).load()
    tokenizer = reranker.runner.load().tokenizer
    if not _clipping.word_breaks(tokenizer):
        pytest.skip("this tokenizer splits no words first: a query is read whole, as before")
    longest: list[int] = []
    calls: list[int] = []
    backend_call = type(tokenizer).__call__

    class Spy(type(tokenizer)):  # type: ignore[misc]
        def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
            texts = [text] if isinstance(text, str) else list(text or [])
            pair = args[0] if args and not isinstance(args[0], str) else []
            sizes = [len(t) for t in [*texts, *(pair or [])] if isinstance(t, str)]
            longest.append(max(sizes, default=0))
            calls.append(sum(size > 100_000 for size in sizes))
            return backend_call(self, text, *args, **kwargs)

    tokenizer.__class__ = Spy
    try:
        huge = ("milvus is a vector database for similarity search " * 110_000)[:5_000_000]
        documents = ["paris is the capital of france"] * 20
        response = reranker.rerank_response(huge, documents)
    finally:
        tokenizer.__class__ = Spy.__mro__[1]
    assert len(response.results) == 20
    read = reranker.family.query_tokens_read(reranker.runner.load().max_length)
    assert max(longest) <= _clipping.CHARS_PER_TOKEN * read + 200  # only cuts went in
    assert not any(calls)
