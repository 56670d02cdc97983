"""The local providers' shared fixture: tiny random LLM-reranker checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.providers.local.llm_references import DOCS, LONG_QUERY, QUERY


@pytest.fixture(scope="session")
def llm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Qwen3, Gemma and mxbai-v2 reranker checkpoints, built once a session."""
    from milvus_rerank.providers.local.tiny import (
        QWEN3_RERANKER_CHAT_TEMPLATE,
        build_tiny_gemma_reranker,
        build_tiny_mxbai_v2_reranker,
        build_tiny_qwen3_reranker,
    )

    root = tmp_path_factory.mktemp("tiny-llm")
    texts = [QUERY, LONG_QUERY, *DOCS]
    return {
        "qwen3": build_tiny_qwen3_reranker(
            root / "qwen3",
            texts=texts,
            chat_template=QWEN3_RERANKER_CHAT_TEMPLATE,
            initializer_range=0.2,
        ),
        "gemma": build_tiny_gemma_reranker(root / "gemma", texts=texts, initializer_range=0.2),
        "mxbai": build_tiny_mxbai_v2_reranker(root / "mxbai", texts=texts, initializer_range=0.2),
    }
