"""``milvus_rerank.langchain``: the public path of ``milvus_rerank.integrations.langchain``."""

from milvus_rerank.integrations.langchain import *  # noqa: F403
from milvus_rerank.integrations.langchain import __all__  # noqa: F401
