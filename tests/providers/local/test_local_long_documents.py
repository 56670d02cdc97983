"""A long document is cut before tokenizing only where the cut cannot change what is read.

``LocalModelRunner.clip_documents`` spares tokenizing megabytes to read a window or ten: for
every local family and both ``long_documents`` modes, a cut document scores bit for bit (and
counts the same tokens) as the whole text, and text whose cut would not hold enough tokens
(whitespace runs) is tokenized whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from milvus_rerank.providers.local import clipping as _clipping  # noqa: E402
from tests.providers.local.test_passages import FAMILIES, QUERY, family_dirs, make  # noqa: E402, F401

PROSE = "paris is the capital of france. " + "milvus is a vector database, berlin a city. " * 600
DOCUMENTS = {
    "prose": PROSE,
    "cjk": "東京" * 12_000,  # no spaces: one word to a word-splitting tokenizer
    # No spaces, but clause punctuation a BERT or byte-level tokenizer splits at.
    "cjk prose": "東京は日本の首都です。パリ、フランス！ミルバス？" * 600,
    "specials": "alan turing </s> <|im_end|> [SEP] <s> proposed a test " * 500,
    "whitespace": "paris" + " " * 40_000 + "is the capital of france " * 3,
    "mixed": "the capital " + "\n\n\t  " * 3_000 + "of france " * 2_000,
}
#: Families whose tiny tokenizers read no token from a run of whitespace (BERT, XLM-R); the
#: byte-level ones read whitespace as tokens, so their cut holds enough of them.
WORD_SPLITTERS = ("cross-encoder", "bge")
MODES: dict[str, dict[str, Any]] = {
    "truncate": {},
    "max_passage": {"long_documents": "max_passage", "max_passages": 2, "passage_overlap": 8},
}


class Seen:
    """Records what the runner hands its family: the length of each document, by its own."""

    def __init__(self, reranker: Any) -> None:
        self.lengths: dict[int, int] = {}
        runner = reranker.runner
        clip = runner.clip_documents

        def spy(tokenizer: Any, documents: Sequence[str], max_length: int) -> Sequence[str]:
            out = clip(tokenizer, documents, max_length)
            self.lengths.update({len(d): len(o) for d, o in zip(documents, out, strict=True)})
            return out

        runner.clip_documents = spy


def whole(reranker: Any) -> Any:
    """``reranker`` with the cut switched off: the whole text is tokenized, as before."""
    reranker.runner.clip_documents = lambda tokenizer, documents, max_length: documents
    return reranker


def read_tokens(reranker: Any) -> int:
    runner = reranker.runner
    passages = runner.max_passages if runner.long_documents == "max_passage" else 1
    return int(runner.load().max_length) * passages


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("key", FAMILIES)
def test_a_cut_document_scores_as_the_whole_text(
    family_dirs: dict[str, Path],  # noqa: F811
    key: str,
    mode: str,
    split: bool,
) -> None:
    options = {**MODES[mode], "split_special_tokens": split}
    ours, reference = make(family_dirs, key, **options), whole(make(family_dirs, key, **options))
    seen = Seen(ours)
    documents = [*DOCUMENTS.values(), "paris is the capital of france"]
    got = ours.rerank_response(QUERY, documents)
    expected = reference.rerank_response(QUERY, documents)
    assert [(r.index, r.score) for r in got.results] == [
        (r.index, r.score) for r in expected.results
    ]
    assert got.usage == expected.usage
    limit = _clipping.CHARS_PER_TOKEN * read_tokens(ours)
    cut = {name: seen.lengths[len(text)] for name, text in DOCUMENTS.items()}
    breaks = _clipping.word_breaks(ours.runner.load().tokenizer)
    assert cut["cjk"] == len(DOCUMENTS["cjk"])  # no break to cut at: read whole
    if not breaks:  # a tokenizer that splits no words first (Gemma's): never cut
        assert cut == {name: len(text) for name, text in DOCUMENTS.items()}
        return
    assert limit - 60 < cut["prose"] <= limit  # the cut was taken, at a break...
    assert PROSE[cut["prose"]] in breaks
    if key in WORD_SPLITTERS:  # ...and refused where the cut holds too few tokens
        assert cut["whitespace"] == len(DOCUMENTS["whitespace"]) > limit


@pytest.mark.parametrize("key", FAMILIES)
def test_a_document_is_cut_only_between_words(
    family_dirs: dict[str, Path],  # noqa: F811
    key: str,
) -> None:
    # A Unigram model (XLM-R's) segments a run without spaces as a whole: a cut inside the
    # run could change its first tokens. One long word, then words: cut before the word
    # (where it holds too few tokens, so not at all), never inside it.
    reranker = make(family_dirs, key).load()
    seen = Seen(reranker)
    limit = _clipping.CHARS_PER_TOKEN * read_tokens(reranker)
    documents = ["ab" * limit + "c", "paris " + "ab" * limit + " is the capital " * 10]
    got = reranker.rerank_response(QUERY, documents)
    expected = whole(make(family_dirs, key)).rerank_response(QUERY, documents)
    assert [(r.index, r.score) for r in got.results] == [
        (r.index, r.score) for r in expected.results
    ]
    assert seen.lengths == {len(d): len(d) for d in documents}


def test_word_breaks_come_from_the_tokenizer(family_dirs: dict[str, Path]) -> None:  # noqa: F811
    found = {
        key: _clipping.word_breaks(make(family_dirs, key).runner.load().tokenizer)
        for key in FAMILIES
    }
    # BERT's and the byte-level tokenizers split at clause punctuation too; XLM-R's Unigram
    # (BGE) segments a run without spaces as a whole, so only spaces break it.
    assert found["cross-encoder"] == found["qwen3"] == _clipping.BREAK_CANDIDATES
    assert found["bge"] == (" ", "\n") and found["bge-llm"] == ()
    assert _clipping.word_breaks(object()) == ()  # a slow or unknown tokenizer: none


def test_a_left_truncating_tokenizer_is_never_cut(family_dirs: dict[str, Path]) -> None:  # noqa: F811
    ours, reference = make(family_dirs, "bge-llm"), whole(make(family_dirs, "bge-llm"))
    for reranker in (ours, reference):
        reranker.runner.load().tokenizer.truncation_side = "left"  # the tail is what is read
    seen = Seen(ours)
    documents = [PROSE + " the end is read here"]
    assert ours.rerank(QUERY, documents)[0].score == reference.rerank(QUERY, documents)[0].score
    assert seen.lengths == {len(documents[0]): len(documents[0])}


@pytest.mark.parametrize("mode", MODES)
def test_a_five_megabyte_document_is_not_tokenized_whole(
    family_dirs: dict[str, Path],  # noqa: F811
    mode: str,
) -> None:
    reranker = make(family_dirs, "cross-encoder", **MODES[mode]).load()
    seen = Seen(reranker)
    huge = ("milvus is a vector database for similarity search " * 110_000)[:5_000_000]
    response = reranker.rerank_response(QUERY, [huge, "paris is the capital of france"])
    # The tokenizer saw only the cut (whole, the document took about 6 s and 1 GB here).
    limit = _clipping.CHARS_PER_TOKEN * read_tokens(reranker)
    assert limit - 60 < seen.lengths[len(huge)] <= limit
    tokens = response.usage.tokens
    assert tokens is not None and tokens <= 2 * read_tokens(reranker)
