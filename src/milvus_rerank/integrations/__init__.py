"""Adapters to LangChain, LlamaIndex and Milvus.

Users import them as ``milvus_rerank.langchain``, ``milvus_rerank.llama_index`` and
``milvus_rerank.milvus``.
"""
