"""Adapter overhead: LangChain and LlamaIndex adapters over a bare ``rerank`` call.

100 documents with the metadata a Milvus hit carries, a zero-cost reranker (scores from the
text), so what is left is the adapters' own work: reading texts out of framework objects (for
LlamaIndex, ``get_content(MetadataMode.EMBED)``, as its own rerankers do) and building the new
documents. LangChain's own ``CrossEncoderReranker`` over the same zero-cost scores runs beside
ours as the framework's reference.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.common import Row, interleaved
from milvus_rerank.core.base import Reranker

N = 100
TOP_N = 10
LOOPS = 200


class ZeroCost(Reranker):
    def _score(self, query: str, documents: list[str]) -> list[float]:
        return [float(len(d) % 17) for d in documents]


def run() -> list[Row]:
    """The adapter rows."""
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from milvus_rerank.integrations.langchain import RerankCompressor, RerankCrossEncoder
    from milvus_rerank.integrations.llama_index import RerankPostprocessor

    texts = [f"document {i} " + "word " * (i % 30) for i in range(N)]
    metadata = [{"pk": i, "source": "bench.jsonl", "chunk": i % 4} for i in range(N)]
    reranker = ZeroCost()
    docs = [Document(page_content=t, metadata=m) for t, m in zip(texts, metadata, strict=True)]
    nodes = [
        NodeWithScore(node=TextNode(text=t, metadata=m), score=0.5)
        for t, m in zip(texts, metadata, strict=True)
    ]
    compressor = RerankCompressor(reranker=reranker, top_n=TOP_N)
    langchain_own = CrossEncoderReranker(model=RerankCrossEncoder(reranker), top_n=TOP_N)
    postprocessor = RerankPostprocessor(reranker=reranker, top_n=TOP_N)

    def repeat(fn: Callable[[], object]) -> Callable[[], object]:
        return lambda: [fn() for _ in range(LOOPS)]

    t = interleaved(
        {
            "bare": repeat(lambda: reranker.rerank("q", texts, top_n=TOP_N)),
            "lc": repeat(lambda: compressor.compress_documents(docs, "q")),
            "lc_own": repeat(lambda: langchain_own.compress_documents(docs, "q")),
            "li": repeat(lambda: postprocessor.postprocess_nodes(nodes, query_str="q")),
        },
        repeats=5,
    )
    us = {name: seconds / LOOPS * 1e6 for name, seconds in t.items()}
    cell = lambda name: f"{us[name]:.0f} us/call"  # noqa: E731
    return [
        Row.at_most(
            "LangChain RerankCompressor vs bare rerank (100 docs, zero-cost scores)",
            cell("lc"),
            cell("bare"),
            t["lc"] / t["bare"],
            1.05,
        ),
        Row.report(
            "  LangChain's own CrossEncoderReranker, same scores (the framework's reference)",
            cell("lc_own"),
            cell("bare"),
            t["lc_own"] / t["bare"],
        ),
        Row.at_most(
            "LlamaIndex RerankPostprocessor vs bare rerank (100 nodes, zero-cost scores)",
            cell("li"),
            cell("bare"),
            t["li"] / t["bare"],
            1.05,
        ),
        Row.report(
            "  adapter time added to one 100 ms API rerank call (LangChain / LlamaIndex)",
            f"+{(us['lc'] - us['bare']) / 1000:.2f} / +{(us['li'] - us['bare']) / 1000:.2f} ms",
            "100 ms",
            (100_000 + max(us["lc"], us["li"]) - us["bare"]) / 100_000,
        ),
    ]
