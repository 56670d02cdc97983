"""The backends: API rerankers (``api``) and local models (``local``).

API rerankers share one HTTP layer; local ones share one runner and batcher.
"""
