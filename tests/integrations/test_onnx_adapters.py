"""Both adapters over an ONNX-backed reranker: they take any ``Reranker``, this one included."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("langchain_classic")
pytest.importorskip("llama_index.core")

from langchain_core.documents import Document  # noqa: E402
from llama_index.core.schema import NodeWithScore, TextNode  # noqa: E402

from milvus_rerank import BGEReranker, CrossEncoderReranker  # noqa: E402
from milvus_rerank.integrations.langchain import RerankCompressor  # noqa: E402
from milvus_rerank.integrations.llama_index import RerankPostprocessor  # noqa: E402
from tests.conftest import CORPUS  # noqa: E402

QUERY = "what is the capital of france"


def expected(reranker: object, top_n: int) -> list[tuple[str, float]]:
    return [(r.text, r.score) for r in reranker.rerank(QUERY, CORPUS, top_n=top_n)]  # type: ignore[attr-defined]


def test_langchain_compressor_over_onnx(onnx_models: dict[str, Path]) -> None:
    with CrossEncoderReranker(str(onnx_models["ce"]), backend="onnx") as reranker:
        docs = [Document(page_content=t) for t in CORPUS]
        out = RerankCompressor(reranker=reranker, top_n=3).compress_documents(docs, QUERY)
        got = [(d.page_content, d.metadata["relevance_score"]) for d in out]
        assert got == expected(reranker, 3)


async def test_llama_index_postprocessor_over_onnx(onnx_models: dict[str, Path]) -> None:
    with BGEReranker(str(onnx_models["bge"]), backend="onnx", quantization="int8") as reranker:
        nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in CORPUS]
        post = RerankPostprocessor(reranker=reranker, top_n=2)
        out = await post.apostprocess_nodes(nodes, query_str=QUERY)
        assert [(n.node.get_content(), n.score) for n in out] == expected(reranker, 2)
