"""Adapter edges: copies that share nothing mutable, typed option errors, pickling and copies.

Every reranker kind refuses pickling at once with a clear ``TypeError`` and is shared by deep
copies; so are the adapters that hold one. Copied metadata never shares a dict, list or set
with its source; only values that cannot be copied at all are passed through by reference.
"""

from __future__ import annotations

import asyncio
import copy
import math
import pickle
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milvus_rerank import ConfigurationError, InvalidInputError, Reranker
from milvus_rerank.core.results import copy_metadata
from milvus_rerank.integrations.milvus import rerank_hits
from tests.conftest import KINDS, ScoreTableReranker

TABLE = {"alpha": 0.2, "beta": 0.9, "gamma": 0.5}

#: Outside the unit tier: loopback servers, faults or load.
pytestmark = pytest.mark.slow


def _mutables(value: Any) -> list[Any]:
    """Every dict, list and set inside ``value``, itself included."""
    found: list[Any] = []
    if isinstance(value, (dict, list, set)):
        found.append(value)
    items = value.values() if isinstance(value, dict) else value
    if isinstance(value, (dict, list, tuple, set)):
        for item in items:
            found += _mutables(item)
    return found


def _adapters(reranker: Reranker) -> list[object]:
    from milvus_rerank.integrations.langchain import RerankCompressor, RerankCrossEncoder
    from milvus_rerank.integrations.llama_index import RerankPostprocessor

    return [
        RerankCompressor(reranker=reranker),
        RerankCrossEncoder(reranker),
        RerankPostprocessor(reranker=reranker),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_every_reranker_refuses_pickling_and_is_shared_by_deep_copies(
    kind: str, make_reranker: Callable[..., Reranker]
) -> None:
    reranker = make_reranker(kind)
    name = type(reranker).__name__
    with pytest.raises(TypeError, match=f"a {name} cannot be pickled: a reranker holds"):
        pickle.dumps(reranker)
    assert copy.deepcopy(reranker) is reranker and copy.copy(reranker) is reranker
    # the refused pickle left it whole: it still ranks both documents
    ranked = reranker.rerank("capital of france", ["paris is the capital", "cat"])
    assert sorted(r.index for r in ranked) == [0, 1]
    for adapter in _adapters(reranker):
        with pytest.raises(TypeError, match=f"{name} cannot be pickled") as info:
            pickle.dumps(adapter)
        assert "test-key" not in str(info.value)
        clone = copy.deepcopy(adapter)
        assert clone is not adapter and clone.reranker is reranker  # type: ignore[attr-defined]


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        | st.tuples(inner, inner)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(metadata=st.dictionaries(st.text(max_size=4), JSONISH, max_size=5), uncopyable=st.booleans())
def test_copied_metadata_equals_and_shares_no_container(
    metadata: dict[str, Any], uncopyable: bool
) -> None:
    lock = threading.Lock()
    if uncopyable:
        metadata = {**metadata, "lock": lock, "nested": [{"lock": lock, "tags": ["a"]}]}
    before = copy.deepcopy({k: v for k, v in metadata.items() if k not in ("lock", "nested")})
    copied = copy_metadata(metadata)
    assert copied == metadata
    sources = {id(m) for m in _mutables(metadata)}
    assert not any(id(m) in sources for m in _mutables(copied))
    if uncopyable:
        assert copied["lock"] is lock and copied["nested"][0]["lock"] is lock
    for value in _mutables(copied):
        if isinstance(value, list):
            value.append("changed")
    assert {k: v for k, v in metadata.items() if k not in ("lock", "nested")} == before


def test_uncopyable_values_survive_cycles_and_shared_references() -> None:
    lock = threading.Lock()
    shared = ["s"]
    metadata: dict[str, Any] = {"lock": lock, "a": shared, "b": shared, "gen": (i for i in ())}
    metadata["self"] = metadata
    copied = copy_metadata(metadata)
    assert copied["self"] is copied and copied["lock"] is lock
    assert copied["a"] is copied["b"] and copied["a"] is not shared


def test_flat_metadata_is_a_plain_copy() -> None:
    metadata = {"pk": 1, "title": "t", "score": 0.5, "raw": b"x", "none": None}
    copied = copy_metadata(metadata)
    assert copied == metadata and copied is not metadata


BAD_THRESHOLDS = [math.nan, math.inf, -math.inf, True, "0.5", [0.5]]
BAD_TOP_N = [True, False, 0, -1, 2.0, "3", None.__class__]


@pytest.mark.parametrize("value", BAD_THRESHOLDS, ids=repr)
@pytest.mark.parametrize("adapter", ["langchain", "llama_index"])
def test_adapters_reject_bad_thresholds_naming_them(adapter: str, value: object) -> None:
    cls = _adapter_class(adapter)
    with pytest.raises(ConfigurationError, match="score_threshold must be a finite number") as info:
        cls(reranker=ScoreTableReranker(TABLE), score_threshold=value)
    assert repr(value)[:20] in str(info.value)


@pytest.mark.parametrize("value", BAD_TOP_N, ids=repr)
@pytest.mark.parametrize("adapter", ["langchain", "llama_index"])
def test_adapters_reject_bad_top_n_naming_it(adapter: str, value: object) -> None:
    cls = _adapter_class(adapter)
    with pytest.raises(ConfigurationError, match="top_n must be a positive int or None") as info:
        cls(reranker=ScoreTableReranker(TABLE), top_n=value)
    assert repr(value)[:20] in str(info.value)


@pytest.mark.parametrize("value", BAD_TOP_N, ids=repr)
def test_rerank_hits_rejects_bad_top_n_naming_it(value: object) -> None:
    reranker = ScoreTableReranker(TABLE)
    found = [[{"id": 1, "distance": 0.1, "entity": {"text": "beta"}}]]
    with pytest.raises(InvalidInputError, match="top_n must be a positive int or None") as info:
        rerank_hits(reranker, "q", found, top_n=value)  # type: ignore[arg-type]
    assert repr(value)[:20] in str(info.value) and reranker.calls == 0


def _adapter_class(adapter: str) -> Any:
    if adapter == "langchain":
        from milvus_rerank.integrations.langchain import RerankCompressor

        return RerankCompressor
    from milvus_rerank.integrations.llama_index import RerankPostprocessor

    return RerankPostprocessor


@pytest.mark.parametrize(
    ("documents", "named"),
    [
        (["alpha"], "documents[0] must be a langchain Document, got str 'alpha'"),
        ([None], "documents[0] must be a langchain Document, got NoneType"),
        (["doc", 123], "documents[0]"),
        ("abc", "documents must be a sequence of langchain Documents, got str 'abc'"),
        (42, "documents must be a sequence of langchain Documents, got int 42"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langchain_compressor_names_an_item_that_is_no_document(
    documents: object, named: str, mode: str
) -> None:
    from langchain_core.documents import Document

    from milvus_rerank.integrations.langchain import RerankCompressor

    reranker = ScoreTableReranker(TABLE)
    compressor = RerankCompressor(reranker=reranker)
    mixed = [Document(page_content="beta"), 123]
    for items, message in ((documents, named), (mixed, "documents[1] must be a langchain")):
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            if mode == "sync":
                compressor.compress_documents(items, "q")  # type: ignore[arg-type]
            else:
                asyncio.run(compressor.acompress_documents(items, "q"))  # type: ignore[arg-type]
    assert reranker.calls == 0  # refused before anything was scored
