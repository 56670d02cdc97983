"""``milvus_rerank.registry``: the public path of ``milvus_rerank.core.registry``."""

from milvus_rerank.core.registry import *  # noqa: F403
from milvus_rerank.core.registry import __all__  # noqa: F401
