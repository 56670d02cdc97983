"""``milvus_rerank.milvus``: the public path of ``milvus_rerank.integrations.milvus``."""

from milvus_rerank.integrations.milvus import *  # noqa: F403
from milvus_rerank.integrations.milvus import __all__  # noqa: F401
