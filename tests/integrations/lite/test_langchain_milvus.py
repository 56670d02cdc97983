"""LangChain over real Milvus Lite: ContextualCompressionRetriever and an LCEL RAG chain."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_milvus")

from langchain_classic.retrievers import ContextualCompressionRetriever  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.language_models.fake_chat_models import FakeListChatModel  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_core.runnables import RunnableLambda, RunnablePassthrough  # noqa: E402
from langchain_milvus import Milvus  # noqa: E402

from milvus_rerank import CohereReranker, CrossEncoderReranker  # noqa: E402
from milvus_rerank.app.demo import DEMO_QUERY, load_demo_corpus  # noqa: E402
from milvus_rerank.integrations.langchain import RerankCompressor  # noqa: E402
from milvus_rerank.providers.local.tiny import word_vector  # noqa: E402
from tests.integrations.lite.conftest import ordered_vectors  # noqa: E402
from tests.providers.api.test_cassettes import recorded, request_of  # noqa: E402

pytestmark = pytest.mark.integration


class WordEmbeddings(Embeddings):
    def __init__(self, table: dict[str, list[float]] | None = None) -> None:
        self.table = table or {}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.table.get(t) or word_vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table.get(text) or word_vector(text)


def store(tmp_path: Path, texts: list[str], embeddings: Embeddings, **kw: Any) -> Milvus:
    return Milvus.from_texts(
        texts,
        embedding=embeddings,
        metadatas=[{"source": f"doc-{i}", "nested": {"n": i}} for i in range(len(texts))],
        connection_args={"uri": str(tmp_path / "langchain.db")},
        collection_name="rag",
        **kw,
    )


@pytest.fixture
def corpus() -> list[str]:
    return [row["text"] for row in load_demo_corpus()]


def test_compression_retriever_reranks_milvus_hits(
    tmp_path: Path, tiny_models: dict[str, Path], corpus: list[str]
) -> None:
    vector_store = store(tmp_path, corpus, WordEmbeddings())
    reranker = CrossEncoderReranker(str(tiny_models["ce"]))
    retriever = ContextualCompressionRetriever(
        base_compressor=RerankCompressor(reranker=reranker, top_n=3),
        base_retriever=vector_store.as_retriever(search_kwargs={"k": 8}),
    )
    candidates = vector_store.as_retriever(search_kwargs={"k": 8}).invoke(DEMO_QUERY)
    out = retriever.invoke(DEMO_QUERY)
    expected = reranker.rerank(DEMO_QUERY, [d.page_content for d in candidates], top_n=3)
    assert [d.page_content for d in out] == [r.text for r in expected]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx(
        [r.score for r in expected]
    )
    for doc, result in zip(out, expected, strict=True):
        source = candidates[result.index]
        assert (
            doc.metadata["pk"] == source.metadata["pk"]
        )  # langchain_milvus: id=None, pk in metadata
        assert doc.metadata["source"] == source.metadata["source"]
        assert doc.id == source.id


async def test_compression_retriever_async(
    tmp_path: Path, tiny_models: dict[str, Path], corpus: list[str]
) -> None:
    vector_store = store(tmp_path, corpus, WordEmbeddings())
    reranker = CrossEncoderReranker(str(tiny_models["ce"]))
    compressor = RerankCompressor(reranker=reranker, top_n=2)
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=vector_store.as_retriever(search_kwargs={"k": 6})
    )
    out = await retriever.ainvoke(DEMO_QUERY)
    candidates = vector_store.as_retriever(search_kwargs={"k": 6}).invoke(DEMO_QUERY)
    expected = reranker.rerank(DEMO_QUERY, [d.page_content for d in candidates], top_n=2)
    assert [d.page_content for d in out] == [r.text for r in expected]


def test_lcel_rag_chain_feeds_reranked_context(
    tmp_path: Path, tiny_models: dict[str, Path], corpus: list[str]
) -> None:
    vector_store = store(tmp_path, corpus, WordEmbeddings())
    reranker = CrossEncoderReranker(str(tiny_models["ce"]))
    retriever = ContextualCompressionRetriever(
        base_compressor=RerankCompressor(reranker=reranker, top_n=2),
        base_retriever=vector_store.as_retriever(search_kwargs={"k": 6}),
    )
    prompts: list[str] = []

    def remember(value: Any) -> Any:
        prompts.append(value.to_string())
        return value

    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    chain = (
        {
            "context": retriever | (lambda docs: "\n".join(d.page_content for d in docs)),
            "question": RunnablePassthrough(),
        }
        | prompt
        | RunnableLambda(remember)
        | FakeListChatModel(responses=["The Dartmouth Conference."])
        | StrOutputParser()
    )
    assert chain.invoke(DEMO_QUERY) == "The Dartmouth Conference."
    best = retriever.invoke(DEMO_QUERY)
    assert f"Context:\n{best[0].page_content}\n{best[1].page_content}" in prompts[0]


@pytest.mark.vcr
@pytest.mark.default_cassette("rerank.yaml")
def test_cohere_cassette_through_milvus_retriever(tmp_path: Path) -> None:
    query, docs = request_of(recorded("cohere")[0])
    vector_store = store(
        tmp_path,
        docs,
        WordEmbeddings(ordered_vectors(query, docs)),
        index_params={"index_type": "FLAT", "metric_type": "COSINE"},
    )
    reranker = CohereReranker(api_key=os.environ.get("COHERE_API_KEY") or "replay-placeholder")
    retriever = ContextualCompressionRetriever(
        base_compressor=RerankCompressor(reranker=reranker, top_n=2),
        base_retriever=vector_store.as_retriever(search_kwargs={"k": 4}),
    )
    out = retriever.invoke(query)
    assert [d.page_content for d in out] == [docs[1], docs[3]]  # Dartmouth first, per the answer
    assert out[0].metadata["relevance_score"] > out[1].metadata["relevance_score"]
