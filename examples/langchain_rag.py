"""A LangChain RAG chain over Milvus Lite whose retriever reranks its hits.

Run: python examples/langchain_rag.py [--model PATH_TO_CROSS_ENCODER]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import embed, offline_reranker
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_milvus import Milvus

from milvus_rerank.app.demo import DEMO_QUERY, load_demo_corpus
from milvus_rerank.langchain import RerankCompressor


class BagOfWords(Embeddings):
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return embed(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="cross-encoder name or local path")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        reranker = offline_reranker(args.model, Path(folder))
        store = Milvus.from_texts(
            [row["text"] for row in load_demo_corpus()],
            embedding=BagOfWords(),
            connection_args={"uri": str(Path(folder) / "langchain.db")},
            collection_name="ai_history",
        )
        retriever = ContextualCompressionRetriever(
            base_compressor=RerankCompressor(reranker=reranker, top_n=3),
            base_retriever=store.as_retriever(search_kwargs={"k": 8}),
        )
        prompt = ChatPromptTemplate.from_template(
            "Answer from the context.\n\nContext:\n{context}\n\nQuestion: {question}"
        )
        llm = FakeListChatModel(responses=["(a real chat model answers here)"])
        chain = (
            {
                "context": retriever | (lambda docs: "\n".join(d.page_content for d in docs)),
                "question": RunnablePassthrough(),
            }
            | prompt
            | llm
            | StrOutputParser()
        )
        for doc in retriever.invoke(DEMO_QUERY):
            score, pk = doc.metadata["relevance_score"], doc.metadata["pk"]
            print(f"{score:.4f}  pk={pk}  {doc.page_content[:70]}")
        print("answer:", chain.invoke(DEMO_QUERY))


if __name__ == "__main__":
    main()
