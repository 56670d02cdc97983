"""Local rerankers: one module per model family over the shared runner and batcher."""
