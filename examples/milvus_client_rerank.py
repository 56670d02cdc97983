"""pymilvus's reranker flow on Milvus Lite: create, insert, search, rerank the hits.

Run: python examples/milvus_client_rerank.py [--model PATH_TO_CROSS_ENCODER]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import DIM, embed, offline_reranker
from pymilvus import MilvusClient

from milvus_rerank.app.demo import DEMO_QUERY, load_demo_corpus
from milvus_rerank.milvus import rerank_hits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="cross-encoder name or local path")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        reranker = offline_reranker(args.model, Path(folder))
        client = MilvusClient(str(Path(folder) / "example.db"))
        client.create_collection("docs", dimension=DIM, metric_type="COSINE")
        rows = load_demo_corpus()
        client.insert(
            "docs", [{"id": r["id"], "vector": embed(r["text"]), "text": r["text"]} for r in rows]
        )
        hits = client.search("docs", data=[embed(DEMO_QUERY)], limit=5, output_fields=["text"])
        reranked = rerank_hits(reranker, DEMO_QUERY, hits, top_n=3)[0]
        client.close()

    print(f"query: {DEMO_QUERY}")
    print("vector search:")
    for hit in hits[0]:
        print(f"  id={hit['id']:>2} distance={hit['distance']:.4f} {hit['entity']['text'][:70]}")
    print("reranked:")
    for hit in reranked:
        text = hit["entity"]["text"][:70]
        print(f"  id={hit['id']:>2} rerank_score={hit['rerank_score']:.4f} {text}")


if __name__ == "__main__":
    main()
