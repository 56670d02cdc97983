"""Rerankers built over other rerankers: ``FallbackReranker`` and ``CachedReranker``."""
