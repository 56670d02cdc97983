"""A LlamaIndex query engine over MilvusVectorStore (Milvus Lite) with a rerank postprocessor.

Run: python examples/llama_index_query_engine.py [--model PATH_TO_CROSS_ENCODER]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import DIM, embed, offline_reranker
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import MockLLM
from llama_index.vector_stores.milvus import MilvusVectorStore

from milvus_rerank.app.demo import DEMO_QUERY, load_demo_corpus
from milvus_rerank.llama_index import RerankPostprocessor


class BagOfWords(BaseEmbedding):
    def _get_text_embedding(self, text: str) -> list[float]:
        return embed(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return embed(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return embed(query)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="cross-encoder name or local path")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        reranker = offline_reranker(args.model, Path(folder))
        store = MilvusVectorStore(uri=str(Path(folder) / "llama.db"), dim=DIM, overwrite=True)
        index = VectorStoreIndex.from_documents(
            [Document(text=row["text"]) for row in load_demo_corpus()],
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=BagOfWords(),
        )
        engine = index.as_query_engine(
            llm=MockLLM(),
            similarity_top_k=8,
            node_postprocessors=[RerankPostprocessor(reranker=reranker, top_n=3)],
        )
        response = engine.query(DEMO_QUERY)
        for node in response.source_nodes:
            retrieval = node.node.metadata["retrieval_score"]
            print(f"{node.score:.4f} (retrieval {retrieval:.4f})  {node.node.get_content()[:70]}")


if __name__ == "__main__":
    main()
