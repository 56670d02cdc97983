"""Reranking backends: one module per provider over shared HTTP and local-model runners."""
