"""The application: the ``milvus-rerank`` CLI (the only argument parser), demo, eval and serve."""
