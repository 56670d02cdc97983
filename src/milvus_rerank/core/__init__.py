"""The core: errors, results, the ``Reranker`` base, the retry policy and the provider registry.

It imports nothing of the layers above (providers, wrappers, integrations, app).
"""
