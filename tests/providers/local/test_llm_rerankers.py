"""bge-reranker-v2-gemma and mxbai-rerank-v2 against their references; what the LLM rerankers share.

References, one pair at a time, unpadded: FlagEmbedding's ``FlagLLMReranker``; for
mxbai-rerank-v2 the package's ``prepare_inputs``/``forward`` re-typed (the package itself calls
``tokenizer.prepare_for_model``, which transformers 5 removed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from milvus_rerank import (  # noqa: E402
    BGELLMReranker,
    ConfigurationError,
    MxbaiV2Reranker,
    Qwen3Reranker,
    create_reranker,
)
from milvus_rerank.core.registry import provider_spec, providers_taking  # noqa: E402
from milvus_rerank.providers.local.options import INSTRUCTION_PROVIDERS  # noqa: E402
from tests.providers.local.llm_references import (
    DOCS,
    LONG_QUERY,
    QUERY,
    TOL,
    _load,
    _max_diff,
    _spread,
    model_card_qwen3,
    mxbai_package,
    prompt_of,
)

# -- bge-reranker-v2-gemma --------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"normalize": True},
        {"max_length": 48},
        {"max_length": 48, "query_max_length": 6, "normalize": True},
        {"max_length": 40, "prompt": "Is B relevant to A? Yes or No."},
    ],
)
def test_bge_llm_equals_flag_llm_reranker(
    llm_dirs: dict[str, Path], options: dict[str, Any]
) -> None:
    flag = pytest.importorskip("FlagEmbedding")
    path = str(llm_dirs["gemma"])
    reference = _flag_reranker(flag, path)
    pairs = [[q, d] for q in (QUERY, LONG_QUERY) for d in DOCS]
    expected = [float(reference.compute_score([pair], **options)[0]) for pair in pairs]
    mine = {k: v for k, v in options.items() if k not in ("prompt", "max_length")}
    if "max_length" in options:
        mine["max_length"] = options["max_length"]
    reranker = BGELLMReranker(path, instruction=options.get("prompt"), device="cpu", **mine)
    got = reranker.score_pairs([p[0] for p in pairs], [p[1] for p in pairs])
    assert _max_diff(got, expected) <= TOL
    _spread(got)


_FLAG: dict[str, Any] = {}


def _flag_reranker(flag: Any, path: str) -> Any:
    if path not in _FLAG:
        _FLAG[path] = flag.FlagLLMReranker(path, use_fp16=False, devices="cpu")
    return _FLAG[path]


def test_bge_llm_inputs_follow_flag_embedding_truncation(llm_dirs: dict[str, Path]) -> None:
    reranker = BGELLMReranker(str(llm_dirs["gemma"]), device="cpu", max_length=48)
    tokenizer = reranker.runner.load().tokenizer
    rows = reranker.runner.encode_many([LONG_QUERY] * 2, [DOCS[1], "short"])
    prompt = tokenizer("Given a query A", add_special_tokens=False)["input_ids"]
    assert all(r["input_ids"][0] == tokenizer.bos_token_id for r in rows)
    # the long query keeps 3/4 of max_length; the passage side absorbs the rest
    assert len(rows[0]["input_ids"]) > 48, "the prompt comes after truncation, like FlagEmbedding"
    assert any(
        r["input_ids"][i : i + len(prompt)] == prompt
        for r in rows
        for i in range(len(r["input_ids"]))
    )


def test_bge_llm_never_runs_past_the_position_table(
    llm_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """FlagEmbedding appends the prompt after truncation, past the table if it is long."""
    path = str(llm_dirs["gemma"])
    tokenizer, model = _load(llm_dirs["gemma"])
    table = model.config.max_position_embeddings
    huge = prompt_of(tokenizer, table)  # alone it fills the table: no pair can ever fit
    refused = f"prompt\\) takes \\d+ tokens.*position table \\({table} tokens\\)"
    with _transformers_log() as records, pytest.raises(ConfigurationError, match=refused):
        BGELLMReranker(path, device="cpu", instruction=huge).load()
    assert not records, "no false 'longer than the maximum' warning for the prompt"
    base = BGELLMReranker(path, device="cpu", max_length=512)
    early = base.with_instruction(huge)  # made before the load: refused at first scoring
    with pytest.raises(ConfigurationError, match=refused):
        early.score_pairs([QUERY], [DOCS[0]])
    with pytest.raises(ConfigurationError, match=refused):
        base.with_instruction(huge)  # the model is loaded now: refused when made

    long_prompt = prompt_of(tokenizer, 420)  # fits alone; with a long query and passage, not
    view = base.with_instruction(long_prompt)
    prompt = tokenizer(long_prompt, add_special_tokens=False)["input_ids"]
    queries, docs = [LONG_QUERY, QUERY, QUERY], [DOCS[1] * 5, DOCS[1] * 5, "short"]
    with caplog.at_level(logging.WARNING, logger="milvus_rerank"):
        rows = view.runner.encode_many(queries, docs, view.family)
        assert view.runner.encode_many(queries, docs, view.family) == rows
    assert len(rows[0]["input_ids"]) == table, "cut to fit the table, no further"
    assert all(len(r["input_ids"]) <= table for r in rows)
    assert all(r["input_ids"][-len(prompt) :] == prompt for r in rows)
    sep = tokenizer("\n", add_special_tokens=False)["input_ids"]

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    head = [tokenizer.bos_token_id, *ids("A: " + QUERY), *sep]
    passage = ids("B: " + DOCS[1] * 5)[:512]  # FlagEmbedding's cut at max_length
    # Pairs that fit the table keep FlagEmbedding's layout exactly.
    assert rows[1]["input_ids"] == [*head, *passage, *sep, *prompt]
    assert rows[2]["input_ids"] == [*head, *ids("B: short"), *sep, *prompt]
    logged = [r for r in caplog.records if "position table" in r.getMessage()]
    assert len(logged) == 1 and logged[0].name == "milvus_rerank.providers.bge_llm"
    assert str(table) in logged[0].getMessage()
    assert long_prompt.strip()[:20] not in logged[0].getMessage(), "numbers, not the text"
    assert all(math.isfinite(s) for s in view.score_pairs(queries, docs))


# -- mxbai-rerank-v2 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"instruction": "Find the city named in the question"},
        {"max_length": 40},
        {"normalize": True},
        {"normalize": True, "estimated_max": 9.0, "max_length": 60},
    ],
)
def test_mxbai_equals_the_package_formula(
    llm_dirs: dict[str, Path], options: dict[str, Any]
) -> None:
    path = llm_dirs["mxbai"]
    reranker = MxbaiV2Reranker(str(path), device="cpu", batch_size=4, **options)
    queries = [QUERY, LONG_QUERY] * len(DOCS)
    docs = [d for d in DOCS for _ in (0, 1)]
    got = reranker.score_pairs(queries, docs)
    expected = [mxbai_package(path, q, d, **options) for q, d in zip(queries, docs, strict=True)]
    assert _max_diff(got, expected) <= TOL
    _spread(got)


def test_mxbai_max_length_is_bounded_by_the_position_table_like_its_siblings(
    llm_dirs: dict[str, Path],
) -> None:
    table = _load(llm_dirs["mxbai"])[1].config.max_position_embeddings
    for cls, folder in ((MxbaiV2Reranker, "mxbai"), (Qwen3Reranker, "qwen3")):
        with pytest.raises(ConfigurationError, match=f"max_length=1000000 .*holds {table} tokens"):
            cls(str(llm_dirs[folder]), device="cpu", max_length=10**6).load()
    path = str(llm_dirs["mxbai"])
    assert MxbaiV2Reranker(path, device="cpu").input_window() == table  # 8192 capped
    at_table = MxbaiV2Reranker(path, device="cpu", max_length=table)
    assert at_table.input_window() == table
    long_doc = " ".join(DOCS) * 20
    want = mxbai_package(llm_dirs["mxbai"], QUERY, long_doc, max_length=table)
    assert at_table.score_pairs([QUERY], [long_doc]) == pytest.approx([want], abs=TOL)


@contextlib.contextmanager
def _transformers_log() -> Iterator[list[logging.LogRecord]]:
    """Records transformers' warnings (tests/conftest.py sets its verbosity to errors only)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield records
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)


@pytest.mark.parametrize("long_documents", ["truncate", "max_passage"])
@pytest.mark.parametrize(
    ("cls", "folder"),
    [(Qwen3Reranker, "qwen3"), (BGELLMReranker, "gemma"), (MxbaiV2Reranker, "mxbai")],
)
def test_long_text_raises_no_false_transformers_length_warning(
    llm_dirs: dict[str, Path], cls: type[Any], folder: str, long_documents: str
) -> None:
    """Inputs are cut to the window after tokenizing: "will result in indexing errors" is false."""
    reranker = cls(str(llm_dirs[folder]), device="cpu", long_documents=long_documents)
    long_doc = " ".join(DOCS) * 40  # past the 1024-token position table
    with _transformers_log() as records:
        scores = reranker.score_pairs([QUERY, QUERY], [long_doc, DOCS[0]])
    assert all(math.isfinite(s) for s in scores)
    assert not [r for r in records if "sequence length is longer" in r.getMessage()]


def test_mxbai_estimated_max_follows_the_model_name() -> None:
    from milvus_rerank.providers.local.mxbai import estimated_max_for

    assert estimated_max_for("mixedbread-ai/mxbai-rerank-base-v2") == 9.0
    assert estimated_max_for("mixedbread-ai/mxbai-rerank-large-v2") == 12.0
    for bad in (float("nan"), 0, -5.0, float("inf")):
        with pytest.raises(ConfigurationError, match=f"estimated_max must be a positive.*{bad}"):
            MxbaiV2Reranker("x", estimated_max=bad)
    with pytest.raises(ConfigurationError, match="normalize"):
        MxbaiV2Reranker("x", normalize="yes")  # type: ignore[arg-type]


# -- one interface: registry, CLI, adapters, tiny stand-ins --------------------------------


@pytest.mark.parametrize(
    ("key", "cls", "folder"),
    [
        ("qwen3", Qwen3Reranker, "qwen3"),
        ("bge-llm", BGELLMReranker, "gemma"),
        ("mxbai-v2", MxbaiV2Reranker, "mxbai"),
    ],
)
def test_registry_creates_each_family(
    llm_dirs: dict[str, Path], key: str, cls: type[Any], folder: str
) -> None:
    spec = provider_spec(key)
    assert spec.kind == "local" and spec.default_model == cls.default_model
    reranker = create_reranker(key, model_name=str(llm_dirs[folder]), device="cpu")
    assert type(reranker) is cls and reranker.provider == key
    results = reranker.rerank(QUERY, DOCS[:4], top_n=2)
    assert len(results) == 2 and results[0].score >= results[1].score


@pytest.mark.parametrize("cls", [Qwen3Reranker, BGELLMReranker, MxbaiV2Reranker])
def test_tiny_stand_ins_load_and_score(cls: type[Any], tmp_path: Path) -> None:
    path = cls.build_tiny_checkpoint(tmp_path / cls.provider)
    scores = cls(str(path), device="cpu").score_pairs([QUERY] * 3, DOCS[:3])
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)


def test_cli_reranks_with_qwen3(
    llm_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from milvus_rerank.app.cli import main

    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": d}) for d in DOCS[:4]) + "\n", encoding="utf-8")
    path = str(llm_dirs["qwen3"])
    argv = ["rerank", "--reranker", "qwen3", "--model", path, "--device", "cpu", QUERY, str(docs)]
    assert main(argv) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = Qwen3Reranker(path, device="cpu").rerank(QUERY, DOCS[:4])
    assert [p["index"] for p in printed] == [r.index for r in expected]
    assert [p["score"] for p in printed] == pytest.approx([r.score for r in expected], abs=1e-6)


def test_langchain_and_llama_index_adapters_over_qwen3(llm_dirs: dict[str, Path]) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from milvus_rerank.integrations.langchain import RerankCompressor
    from milvus_rerank.integrations.llama_index import RerankPostprocessor

    reranker = Qwen3Reranker(str(llm_dirs["qwen3"]), device="cpu")
    expected = reranker.rerank(QUERY, DOCS[:5], top_n=3)
    docs = [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(DOCS[:5])]
    compressed = RerankCompressor(reranker=reranker, top_n=3).compress_documents(docs, QUERY)
    assert [d.metadata["i"] for d in compressed] == [r.index for r in expected]
    nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i))) for i, d in enumerate(DOCS[:5])]
    post = RerankPostprocessor(reranker=reranker.with_instruction(None), top_n=3)
    out = post.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.node_id for n in out] == [str(r.index) for r in expected]
    assert [n.score for n in out] == pytest.approx([r.score for r in expected], abs=1e-6)


# -- views, options, checkpoints --------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "folder", "options"),
    [
        (Qwen3Reranker, "qwen3", {}),
        (BGELLMReranker, "gemma", {"normalize": True}),
        (MxbaiV2Reranker, "mxbai", {"max_length": 64}),
    ],
)
def test_a_view_answers_like_its_family(
    llm_dirs: dict[str, Path], cls: type[Any], folder: str, options: dict[str, Any]
) -> None:
    path = str(llm_dirs[folder])
    base = cls(path, device="cpu", **options)
    view = base.with_instruction("Judge strictly")
    assert view.input_window() == base.input_window() is not None
    # Its repr is the family's, and builds a reranker scoring alike.
    twin = cls(path, device="cpu", instruction="Judge strictly", **options)
    assert repr(view) == repr(twin) and repr(view).startswith(f"{cls.__name__}(")
    assert repr(base.with_instruction(None)) == repr(base)
    assert view.score_pairs([QUERY] * 3, DOCS[:3]) == pytest.approx(
        twin.score_pairs([QUERY] * 3, DOCS[:3]), abs=1e-6
    )


def test_unknown_options_name_the_family_and_who_takes_them() -> None:
    from milvus_rerank import BGEReranker

    with pytest.raises(ConfigurationError, match="instrution.*did you mean 'instruction'") as e:
        create_reranker("qwen3", model_name="x", instrution="legal")
    assert "Qwen3Reranker" in str(e.value) and "device" in str(e.value)
    with pytest.raises(ConfigurationError) as e:
        BGELLMReranker("x", normalise=True)  # type: ignore[call-arg]
    assert all(o in str(e.value) for o in ("'normalize'", "query_max_length", "instruction"))
    with pytest.raises(ConfigurationError, match="'normalize' for Qwen3Reranker. Its own opti"):
        Qwen3Reranker("x", normalize=True)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="did you mean 'model_name'"):
        Qwen3Reranker(model="x")  # type: ignore[call-arg]
    # A reranker without instructions says which rerankers take one.
    takers = "qwen3, bge-llm, mxbai-v2"
    assert ", ".join(providers_taking("instruction")) == takers  # read from the classes
    assert INSTRUCTION_PROVIDERS == tuple(providers_taking("instruction"))  # kept in step
    with pytest.raises(ConfigurationError, match=f"only {takers} take an instruction"):
        BGEReranker("x", instruction="legal")  # type: ignore[call-arg]
    with pytest.raises(AttributeError, match=f"BGEReranker takes no instruction.*{takers}"):
        BGEReranker("x").with_instruction("legal")  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        BGEReranker("x").nothing_here  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.parametrize(
    ("cls", "folder", "found", "expected"),
    [
        (Qwen3Reranker, "gemma", "'gemma'", "'qwen3'"),
        (BGELLMReranker, "qwen3", "'qwen3'", "'gemma', 'gemma2'"),
        (MxbaiV2Reranker, "gemma", "'gemma'", "'qwen2'"),
        (Qwen3Reranker, "mxbai", "'qwen2'", "'qwen3'"),
    ],
)
def test_a_checkpoint_of_another_family_is_refused(
    llm_dirs: dict[str, Path], cls: type[Any], folder: str, found: str, expected: str
) -> None:
    reranker = cls(str(llm_dirs[folder]), device="cpu")
    with pytest.raises(ConfigurationError, match=f"is a {found} checkpoint.*{expected}"):
        reranker.score_pairs([QUERY], [DOCS[0]])


def test_an_empty_instruction_means_what_each_reference_says(llm_dirs: dict[str, Path]) -> None:
    """``""`` is literal for Qwen3 and bge-llm, "no instruction line" for mxbai; None: default."""
    qwen3 = Qwen3Reranker(str(llm_dirs["qwen3"]), device="cpu", instruction="")
    card = [model_card_qwen3(llm_dirs["qwen3"], QUERY, d, instruction="") for d in DOCS[:3]]
    assert _max_diff(qwen3.score_pairs([QUERY] * 3, DOCS[:3]), card) <= TOL
    default = Qwen3Reranker(str(llm_dirs["qwen3"]), device="cpu").score_pairs([QUERY], DOCS[:1])
    assert abs(qwen3.score_pairs([QUERY], DOCS[:1])[0] - default[0]) > 1e-4
    mxbai = MxbaiV2Reranker(str(llm_dirs["mxbai"]), device="cpu")
    for instruction in ("", "   "):
        got = mxbai.with_instruction(instruction).score_pairs([QUERY] * 3, DOCS[:3])
        want = [mxbai_package(llm_dirs["mxbai"], QUERY, d, instruction) for d in DOCS[:3]]
        assert _max_diff(got, want) <= TOL
    assert mxbai.with_instruction("").score_pairs([QUERY], DOCS[:1]) == pytest.approx(
        mxbai.score_pairs([QUERY], DOCS[:1]), abs=1e-6
    )
    bge = BGELLMReranker(str(llm_dirs["gemma"]), device="cpu", instruction="")
    rows = bge.runner.encode_pairs(QUERY, DOCS[:1])
    newline = bge.family.ids(bge.runner.load().tokenizer, "\n")
    assert rows[0]["input_ids"][-len(newline) :] == newline  # the pair, "\n", then no prompt
