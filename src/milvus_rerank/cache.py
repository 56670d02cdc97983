"""``milvus_rerank.cache``: the public path of ``milvus_rerank.wrappers.cache``."""

from milvus_rerank.wrappers.cache import *  # noqa: F403
from milvus_rerank.wrappers.cache import __all__  # noqa: F401
