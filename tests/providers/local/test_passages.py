"""Long documents scored by their best passage (``long_documents="max_passage"``).

For every local family, on tiny random checkpoints: a document that fits is encoded and scored
bit for bit as with truncation; a long one is scored over windows of its own tokens, the first
being the row truncation scores, so its score is never below truncation's, and text past the
window can change it. The windowing rule itself is checked without a model.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local.family import Located
from milvus_rerank.providers.local.passages import (
    DEFAULT_MAX_PASSAGES,
    DEFAULT_PASSAGE_OVERLAP,
    passage_rows,
    passage_spans,
)
from tests.conftest import CORPUS

QUERY = "what is the capital of france"
#: Documents that fit beside the query at every family's ``max_length`` below.
SHORT = ["paris is the capital of france", "", "milvus is a vector database", "café 東京 🚀"]
#: Over 100 tokens in every tiny vocabulary: several windows at the limits below.
LONG = " ".join(CORPUS[1:5] * 4) + " alan turing proposed a test"
#: Reranker, tiny checkpoint, and a ``max_length`` that a LONG document overflows.
FAMILIES: dict[str, tuple[str, str, int]] = {
    "cross-encoder": ("CrossEncoderReranker", "ce", 40),
    "bge": ("BGEReranker", "bge", 40),
    "qwen3": ("Qwen3Reranker", "qwen3", 150),
    "bge-llm": ("BGELLMReranker", "gemma", 40),
    "mxbai-v2": ("MxbaiV2Reranker", "mxbai", 40),
}


# -- the windowing rule, without a model -----------------------------------------------------


@pytest.mark.parametrize(
    ("length", "window", "overlap"),
    [(100, 30, 8), (31, 30, 8), (61, 30, 0), (1000, 7, 64), (90, 30, 10), (5, 1, 0)],
)
def test_windows_cover_the_document_in_full_windows(length: int, window: int, overlap: int) -> None:
    spans = passage_spans(length, window, overlap, max_passages=1000)
    step = window - min(overlap, window // 2)
    assert spans[0].start == 0 and spans[-1].stop == length, "from the first token to the last"
    assert all(len(span) == window for span in spans), "every window is full"
    assert all(b.start - a.start == step for a, b in zip(spans, spans[1:-1], strict=False))
    assert 0 < spans[-1].start - spans[-2].start <= step, "the tail moves back, never forward"
    assert set().union(*spans) == set(range(length))


def test_a_document_that_fits_is_one_window() -> None:
    assert passage_spans(30, 30, 8, 10) == [range(30)]
    assert passage_spans(0, 30, 8, 10) == [range(0)]


def test_max_passages_drops_the_rest_of_the_document() -> None:
    spans = passage_spans(1000, 100, 20, max_passages=3)
    assert spans == [range(100), range(80, 180), range(160, 260)]
    assert passage_spans(1000, 100, 20, max_passages=1) == [range(100)]
    assert len(passage_spans(1000, 100, 20, max_passages=100)) == 13  # 1 + ceil(900 / 80)
    assert passage_spans(1000, 100, 20, max_passages=12)[-1] == range(880, 980)


def test_rows_swap_each_window_in_for_the_kept_part() -> None:
    row = {"input_ids": [101, 7, 102, 1, 2, 3, 102], "token_type_ids": [0, 0, 0, 1, 1, 1, 1]}
    document = [1, 2, 3, 4, 5, 6, 7]
    rows = passage_rows(Located(row, document, start=3, stop=6), overlap=1, max_passages=10)
    assert rows[0] is row
    assert [r["input_ids"] for r in rows] == [
        [101, 7, 102, 1, 2, 3, 102],
        [101, 7, 102, 3, 4, 5, 102],
        [101, 7, 102, 5, 6, 7, 102],
    ]
    assert all(r["token_type_ids"] == row["token_type_ids"] for r in rows)


@pytest.mark.parametrize(
    "located",
    [
        Located({"input_ids": [1, 2, 3]}),  # not located
        Located({"input_ids": [9, 1, 2]}, [1, 2], start=1, stop=3),  # fits
        Located({"input_ids": [9, 5]}, [1, 2, 3], start=1, stop=1),  # nothing kept
        Located({"input_ids": [9, 8, 2]}, [1, 2, 3], start=1, stop=3),  # not where it says
    ],
)
def test_rows_that_cannot_be_split_stay_one_row(located: Located) -> None:
    assert passage_rows(located, overlap=0, max_passages=10) == [located.row]


# -- every local family --------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_dirs(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    from milvus_rerank.providers.local.tiny import (
        build_tiny_gemma_reranker,
        build_tiny_mxbai_v2_reranker,
        build_tiny_qwen3_reranker,
    )

    root = tmp_path_factory.mktemp("tiny-passages")
    texts = [QUERY, *CORPUS]
    return {
        "ce": tiny_models["ce"],
        "bge": tiny_models["bge"],
        "qwen3": build_tiny_qwen3_reranker(root / "q", texts=texts, initializer_range=0.2),
        "gemma": build_tiny_gemma_reranker(root / "g", texts=texts, initializer_range=0.2),
        "mxbai": build_tiny_mxbai_v2_reranker(root / "m", texts=texts, initializer_range=0.2),
    }


def make(dirs: dict[str, Path], key: str, **options: Any) -> Any:
    import milvus_rerank

    name, folder, max_length = FAMILIES[key]
    cls = getattr(milvus_rerank, name)
    return cls(str(dirs[folder]), device="cpu", max_length=max_length, **options)


def first_rows(prepared: Any) -> list[dict[str, list[int]]]:
    """Each pair's first row."""
    first: dict[int, dict[str, list[int]]] = {}
    for row, owner in zip(prepared.rows, prepared.owners, strict=True):
        first.setdefault(owner, row)
    return [first[pair] for pair in range(prepared.pairs)]


@pytest.mark.parametrize("key", FAMILIES)
def test_documents_that_fit_score_exactly_as_truncated(
    family_dirs: dict[str, Path], key: str
) -> None:
    truncate = make(family_dirs, key)
    passages = make(family_dirs, key, long_documents="max_passage")
    prepared = passages.runner.prepare([QUERY] * len(SHORT), SHORT)
    assert prepared.owners == list(range(len(SHORT)))
    loaded = passages.runner.load()
    located = passages.family.locate(loaded.tokenizer, [QUERY] * 4, SHORT, loaded.max_length)
    assert [item.document for item in located] == [()] * 4, "nothing cut, nothing located"
    assert prepared.rows == truncate.runner.encode_pairs(QUERY, SHORT)
    assert passages._score(QUERY, SHORT) == truncate._score(QUERY, SHORT)  # bit for bit
    usage = passages.rerank_response(QUERY, SHORT).usage
    assert usage.tokens == truncate.rerank_response(QUERY, SHORT).usage.tokens


@pytest.mark.parametrize("key", FAMILIES)
def test_a_long_document_is_read_in_windows_of_its_own_tokens(
    family_dirs: dict[str, Path], key: str
) -> None:
    truncate = make(family_dirs, key)
    passages = make(family_dirs, key, long_documents="max_passage", passage_overlap=4)
    docs = [*SHORT, LONG]
    prepared = passages.runner.prepare([QUERY] * len(docs), docs)
    truncated = truncate.runner.encode_pairs(QUERY, docs)
    assert first_rows(prepared) == truncated, "the first window is what truncation scores"
    windows = [r for r, o in zip(prepared.rows, prepared.owners, strict=True) if o == len(SHORT)]
    assert 2 < len(windows) <= DEFAULT_MAX_PASSAGES
    assert prepared.owners == [*range(len(SHORT)), *[len(SHORT)] * len(windows)]
    assert {len(r["input_ids"]) for r in windows} == {len(truncated[-1]["input_ids"])}

    loaded = passages.runner.load()
    [item] = passages.family.locate(loaded.tokenizer, [QUERY], [LONG], loaded.max_length)
    kept = item.stop - item.start
    document = list(item.document)
    assert loaded.tokenizer.decode(document).strip() == LONG, "the document's own tokens"
    assert windows[0]["input_ids"][item.start : item.stop] == document[:kept]
    assert windows[1]["input_ids"][item.start : item.stop] == document[kept - 4 : 2 * kept - 4]
    assert windows[-1]["input_ids"][item.start : item.stop] == document[-kept:]
    for window in windows:  # what surrounds the document (query, prompt, specials) stays
        assert window["input_ids"][: item.start] == windows[0]["input_ids"][: item.start]
        assert window["input_ids"][item.stop :] == windows[0]["input_ids"][item.stop :]
    usage = passages.rerank_response(QUERY, docs).usage
    assert usage.tokens == sum(len(row["input_ids"]) for row in prepared.rows)


@pytest.mark.parametrize("key", FAMILIES)
def test_a_family_locates_exactly_the_documents_truncation_cut(
    family_dirs: dict[str, Path], key: str
) -> None:
    reranker = make(family_dirs, key, long_documents="max_passage")
    loaded, family = reranker.runner.load(), reranker.family
    words = LONG.split()
    docs = [" ".join(words[:n]) for n in range(1, len(words) + 1, 2)]
    queries = [QUERY] * len(docs)
    located = family.locate(loaded.tokenizer, queries, docs, loaded.max_length)
    roomy = family.encode(loaded.tokenizer, queries, docs, 500)  # every prefix fits in 500
    assert [item.row for item in located] == family.encode(
        loaded.tokenizer, queries, docs, loaded.max_length
    )
    cut = [item.row != whole for item, whole in zip(located, roomy, strict=True)]
    assert [bool(item.document) for item in located] == cut
    assert 0 < cut.index(True) and all(cut[cut.index(True) :]), "short ones fit, long ones not"


@pytest.mark.parametrize("key", FAMILIES)
def test_text_past_the_window_can_raise_the_score_never_lower_it(
    family_dirs: dict[str, Path], key: str
) -> None:
    filler = " ".join(CORPUS[1:5] * 2)  # past the first window, in every family
    docs = [f"{filler} {tail} {tail} {tail}" for tail in [QUERY, *CORPUS]]
    truncated = make(family_dirs, key)._score(QUERY, docs)
    best = make(family_dirs, key, long_documents="max_passage")._score(QUERY, docs)
    assert max(truncated) - min(truncated) < 1e-6, "truncation never reads the tails"
    # The first window is truncation's row bit for bit, but batched (padded) beside other
    # windows: a different padded shape moves a float32 score by float rounding (~4e-6 seen
    # with mxbai), hence the tolerance the README states.
    assert all(b >= t - 1e-5 for b, t in zip(best, truncated, strict=True))
    assert max(best) - min(best) > 1e-4, "max_passage reads them"


@pytest.mark.parametrize("key", FAMILIES)
def test_max_passages_bounds_the_windows(family_dirs: dict[str, Path], key: str) -> None:
    docs = [*SHORT, LONG]
    one = make(family_dirs, key, long_documents="max_passage", max_passages=1)
    truncate = make(family_dirs, key)
    assert one.runner.prepare([QUERY] * len(docs), docs).rows == truncate.runner.encode_pairs(
        QUERY, docs
    )
    assert one._score(QUERY, docs) == truncate._score(QUERY, docs)
    two = make(family_dirs, key, long_documents="max_passage", max_passages=2)
    assert two.runner.prepare([QUERY] * len(docs), docs).owners.count(len(SHORT)) == 2


@pytest.mark.parametrize("key", FAMILIES)
def test_windows_read_special_token_strings_as_text_with_split_special_tokens(
    family_dirs: dict[str, Path], key: str
) -> None:
    reranker = make(family_dirs, key, long_documents="max_passage", split_special_tokens=True)
    loaded = reranker.runner.load()
    tokenizer = loaded.tokenizer
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    control_ids = set(tokenizer.convert_tokens_to_ids(specials)) - {tokenizer.unk_token_id}
    words = LONG.split()
    doc = " ".join(f"{w} {specials[i % len(specials)]}" for i, w in enumerate(words))
    split = make(family_dirs, key, split_special_tokens=True)
    truncated = split.runner.encode_pairs(QUERY, [doc])
    [clean] = split.runner.encode_pairs(QUERY, [LONG])

    def controls(row: dict[str, list[int]]) -> list[int]:
        return [i for i in row["input_ids"] if i in control_ids]

    assert controls(truncated[0]) == controls(clean), "the template's own, no more"
    prepared = reranker.runner.prepare([QUERY], [doc])
    assert prepared.rows[0] == truncated[0], "the first window is what truncation scores"
    assert len(prepared.rows) > 2
    [item] = reranker.family.locate(tokenizer, [QUERY], [doc], loaded.max_length)
    assert item.document and not control_ids & set(item.document)
    for row in prepared.rows:
        assert not control_ids & set(row["input_ids"][item.start : item.stop])
    [plain] = make(family_dirs, key).runner.encode_pairs(QUERY, [doc])
    assert len(controls(plain)) > len(controls(clean)), "by default, as the references"
    assert len(reranker._score(QUERY, [doc])) == 1


def test_the_windows_of_every_document_share_the_batches(
    family_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reranker = make(
        family_dirs, "bge", long_documents="max_passage", batch_size=256, max_tokens_per_batch=10**6
    )
    runner = reranker.runner
    calls: list[int] = []
    forward = runner._forward

    def counted(loaded: Any, rows: list[dict[str, list[int]]]) -> list[float]:
        calls.append(len(rows))
        return forward(loaded, rows)

    monkeypatch.setattr(runner, "_forward", counted)
    docs = [LONG, *SHORT, LONG + " milvus", LONG + " paris"]
    prepared = runner.prepare([QUERY] * len(docs), docs)
    assert len(prepared.rows) >= 3 * 3 + len(SHORT)
    reranker._score(QUERY, docs)
    assert calls == [len(prepared.rows)], "one forward pass over all windows"


def test_an_instruction_view_reads_windows_too(family_dirs: dict[str, Path]) -> None:
    base = make(family_dirs, "qwen3", long_documents="max_passage")
    view = base.with_instruction("Find the passage about france")
    prepared = view.runner.prepare([QUERY, QUERY], [SHORT[0], LONG], view.family)
    assert prepared.pairs == 2 and len(prepared.rows) > 2
    assert view.runner is base.runner


def test_concurrent_callers_get_the_serial_scores(family_dirs: dict[str, Path]) -> None:
    reranker = make(family_dirs, "cross-encoder", long_documents="max_passage")
    docs = [*SHORT, LONG, LONG + " paris"]
    expected = reranker._score(QUERY, docs)
    results: list[list[float]] = []

    def call() -> None:
        results.append(reranker._score(QUERY, docs))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Callers share forward passes (batch_across_calls): padding beside other rows moves a
    # float32 score by float noise only.
    assert len(results) == 4
    for scores in results:
        assert scores == pytest.approx(expected, abs=1e-5)


# -- options, and what carries them ---------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"long_documents": "chunk"}, "'chunk'"),
        ({"long_documents": None}, "None"),
        ({"passage_overlap": -1}, "-1"),
        ({"passage_overlap": 1.5}, "1.5"),
        ({"passage_overlap": True}, "True"),
        ({"max_passages": 0}, "0"),
        ({"max_passages": "3"}, "'3'"),
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, Any], named: str) -> None:
    from milvus_rerank import BGEReranker, Qwen3Reranker

    for cls in (BGEReranker, Qwen3Reranker):
        with pytest.raises(ConfigurationError, match=f"{next(iter(options))}.*{named}"):
            cls("unloaded", **options)


def test_repr_shows_options_that_are_not_the_defaults() -> None:
    from milvus_rerank import CrossEncoderReranker

    assert "long_documents" not in repr(CrossEncoderReranker("x"))
    shown = repr(CrossEncoderReranker("x", long_documents="max_passage", max_passages=3))
    assert "long_documents='max_passage'" in shown and "max_passages=3" in shown
    assert "passage_overlap" not in shown
    assert f"passage_overlap={DEFAULT_PASSAGE_OVERLAP + 1}" in repr(
        CrossEncoderReranker(
            "x", long_documents="max_passage", passage_overlap=DEFAULT_PASSAGE_OVERLAP + 1
        )
    )


@pytest.mark.parametrize(
    "options",
    [
        {"passage_overlap": 5},
        {"max_passages": 3},
        {"long_documents": "truncate", "max_passages": DEFAULT_MAX_PASSAGES},
        {"passage_overlap": 0, "max_passages": 2},
    ],
)
def test_window_options_without_max_passage_are_refused(options: dict[str, Any]) -> None:
    from milvus_rerank import BGEReranker, Qwen3Reranker

    named = " and ".join(sorted(set(options) - {"long_documents"}))
    for cls in (BGEReranker, Qwen3Reranker):
        with pytest.raises(ConfigurationError, match=f"{named} appl(y|ies) only with long_doc"):
            cls("unloaded", **options)


def test_the_command_line_passes_the_options_to_local_rerankers_only(
    family_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from milvus_rerank.app.cli import main, open_reranker

    path = str(family_dirs["ce"])
    with open_reranker(
        "cross-encoder",
        model_name=path,
        long_documents="max_passage",
        passage_overlap=8,
        max_passages=3,
    ) as (reranker, tiny):
        runner = reranker.runner  # type: ignore[attr-defined]
        assert not tiny and (runner.long_documents, runner.passage_overlap) == ("max_passage", 8)
        assert runner.max_passages == 3
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": d}) for d in [*SHORT, LONG]) + "\n")
    argv = ["rerank", "--reranker", "cross-encoder", "--model", path, QUERY, str(docs)]
    assert main([*argv, "--long-documents", "max_passage"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    from milvus_rerank import CrossEncoderReranker

    expected = CrossEncoderReranker(path, long_documents="max_passage").rerank(
        QUERY, [*SHORT, LONG]
    )
    assert [p["index"] for p in printed] == [r.index for r in expected]
    api = ["rerank", "--reranker", "cohere", "--long-documents", "max_passage", "q", str(docs)]
    assert main(api) == 2
    err = capsys.readouterr().err
    assert "long_documents 'max_passage' is for local rerankers" in err
    assert main([*argv, "--passage-overlap", "5"]) == 2
    assert (
        "passage_overlap applies only with long_documents='max_passage'" in capsys.readouterr().err
    )


def test_serve_lets_max_passages_windows_through(family_dirs: dict[str, Path]) -> None:
    pytest.importorskip("starlette")
    from milvus_rerank.app.serve import CHARS_PER_TOKEN, create_app

    plain = make(family_dirs, "bge")
    assert create_app(plain).state.max_document_chars == CHARS_PER_TOKEN * 40
    passages = make(family_dirs, "bge", long_documents="max_passage", max_passages=4)
    assert create_app(passages).state.max_document_chars == CHARS_PER_TOKEN * 40 * 4


def test_langchain_compressor_over_a_max_passage_reranker(family_dirs: dict[str, Path]) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from milvus_rerank.integrations.langchain import RerankCompressor

    reranker = make(family_dirs, "bge", long_documents="max_passage")
    docs = [*SHORT, LONG, f"{LONG} paris is the capital of france"]
    expected = reranker.rerank(QUERY, docs, top_n=3)
    given = [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(docs)]
    got = RerankCompressor(reranker=reranker, top_n=3).compress_documents(given, QUERY)
    assert [d.metadata["i"] for d in got] == [r.index for r in expected]
    assert [d.metadata["relevance_score"] for d in got] == [r.score for r in expected]
