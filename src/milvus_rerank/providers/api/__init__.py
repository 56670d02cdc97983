"""API rerankers: one short module per provider over the shared HTTP layer."""
