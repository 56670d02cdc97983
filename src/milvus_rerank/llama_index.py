"""``milvus_rerank.llama_index``: the public path of ``milvus_rerank.integrations.llama_index``."""

from milvus_rerank.integrations.llama_index import *  # noqa: F403
from milvus_rerank.integrations.llama_index import __all__  # noqa: F401
