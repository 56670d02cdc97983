"""LlamaIndex over real Milvus Lite: query engines (sync and async) and a chat engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.vector_stores.milvus")

from llama_index.core import Document, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.vector_stores.milvus import MilvusVectorStore  # noqa: E402

from milvus_rerank import CohereReranker, CrossEncoderReranker  # noqa: E402
from milvus_rerank.app.demo import DEMO_QUERY, load_demo_corpus  # noqa: E402
from milvus_rerank.integrations.llama_index import RerankPostprocessor  # noqa: E402
from milvus_rerank.providers.local.tiny import word_vector  # noqa: E402
from tests.integrations.lite.conftest import DIM, ordered_vectors  # noqa: E402
from tests.providers.api.test_cassettes import recorded, request_of  # noqa: E402

pytestmark = pytest.mark.integration


class WordEmbedding(BaseEmbedding):
    table: dict[str, list[float]] = {}

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.table.get(text) or word_vector(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.table.get(query) or word_vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def build_index(tmp_path: Path, texts: list[str], embed: BaseEmbedding) -> VectorStoreIndex:
    vector_store = MilvusVectorStore(
        uri=str(tmp_path / "llama.db"),
        dim=DIM,
        overwrite=True,
        collection_name="rag",
        use_async_client=True,
    )
    documents = [Document(text=t, id_=f"doc-{i}") for i, t in enumerate(texts)]
    return VectorStoreIndex.from_documents(
        documents,
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=embed,
    )


@pytest.fixture
def corpus() -> list[str]:
    return [row["text"] for row in load_demo_corpus()]


def expected_for(reranker: Any, index: VectorStoreIndex, k: int, top_n: int) -> list[Any]:
    candidates = index.as_retriever(similarity_top_k=k).retrieve(DEMO_QUERY)
    texts = [n.node.get_content(metadata_mode="embed") for n in candidates]  # type: ignore[arg-type]
    return [(candidates[r.index], r) for r in reranker.rerank(DEMO_QUERY, texts, top_n=top_n)]


def test_query_engine_reranks_milvus_nodes(
    tmp_path: Path, tiny_models: dict[str, Path], corpus: list[str]
) -> None:
    index = build_index(tmp_path, corpus, WordEmbedding())
    reranker = CrossEncoderReranker(str(tiny_models["ce"]))
    engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=8,
        node_postprocessors=[RerankPostprocessor(reranker=reranker, top_n=3)],
    )
    response = engine.query(DEMO_QUERY)
    expected = expected_for(reranker, index, 8, 3)
    assert [n.node.node_id for n in response.source_nodes] == [c.node.node_id for c, _ in expected]
    assert [n.score for n in response.source_nodes] == pytest.approx([r.score for _, r in expected])
    assert [n.node.metadata["retrieval_score"] for n in response.source_nodes] == pytest.approx(
        [c.score for c, _ in expected]
    )


async def test_async_query_engine(
    tmp_path: Path, tiny_models: dict[str, Path], corpus: list[str]
) -> None:
    index = build_index(tmp_path, corpus, WordEmbedding())
    reranker = CrossEncoderReranker(str(tiny_models["ce"]))
    engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=6,
        node_postprocessors=[RerankPostprocessor(reranker=reranker, top_n=2)],
    )
    response = await engine.aquery(DEMO_QUERY)
    expected = expected_for(reranker, index, 6, 2)
    assert [n.node.node_id for n in response.source_nodes] == [c.node.node_id for c, _ in expected]


def test_chat_engine_uses_reranked_context(
    tmp_path: Path, tiny_models: dict[str, Path], corpus: list[str]
) -> None:
    index = build_index(tmp_path, corpus, WordEmbedding())
    reranker = CrossEncoderReranker(str(tiny_models["ce"]))
    chat = index.as_chat_engine(
        chat_mode="context",
        llm=MockLLM(),
        similarity_top_k=6,
        node_postprocessors=[RerankPostprocessor(reranker=reranker, top_n=2)],
    )
    response = chat.chat(DEMO_QUERY)
    expected = expected_for(reranker, index, 6, 2)
    assert [n.node.node_id for n in response.source_nodes] == [c.node.node_id for c, _ in expected]


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank.yaml")
async def test_cohere_cassette_through_async_query_engine(tmp_path: Path) -> None:
    query, docs = request_of(recorded("cohere")[0])
    index = build_index(tmp_path, docs, WordEmbedding(table=ordered_vectors(query, docs)))
    async with CohereReranker(
        api_key=os.environ.get("COHERE_API_KEY") or "replay-placeholder"
    ) as reranker:
        engine = index.as_query_engine(
            llm=MockLLM(),
            similarity_top_k=4,
            node_postprocessors=[RerankPostprocessor(reranker=reranker, top_n=2)],
        )
        response = await engine.aquery(query)
    assert [n.node.get_content() for n in response.source_nodes] == [docs[1], docs[3]]
