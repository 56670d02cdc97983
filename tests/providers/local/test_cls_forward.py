"""The [CLS]-only last layer gives the model's own logits, and steps aside where it must."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from milvus_rerank import BGEReranker, CrossEncoderReranker  # noqa: E402
from milvus_rerank.providers.local.cls_forward import DISABLE_ENV, cls_only_forward  # noqa: E402
from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder  # noqa: E402

QUERY = "the birth of artificial intelligence"
DOCS = [
    "the dartmouth conference in 1956 marked the birth of artificial intelligence",
    "paris",
    "alan turing proposed a test of machine intelligence " * 6,
    "",
]


def padded_batch(reranker: CrossEncoderReranker | BGEReranker) -> dict[str, object]:
    runner = reranker.runner
    return runner.collate(runner.encode_pairs(QUERY, DOCS))


@pytest.mark.parametrize("kind", ["ce", "bge"])
def test_same_logits_as_the_full_forward(tiny_models: dict[str, Path], kind: str) -> None:
    cls = CrossEncoderReranker if kind == "ce" else BGEReranker
    reranker = cls(str(tiny_models[kind]), device="cpu")
    loaded = reranker.runner.load()
    assert loaded.head.forward.fast is not None, "the runner scores through the fast path"
    batch = padded_batch(reranker)
    with torch.inference_mode():
        full = loaded.model(**batch).logits.view(-1)
        fast = loaded.head.forward(batch)
    assert fast.shape == full.shape == (len(DOCS),)
    assert torch.allclose(fast, full, atol=1e-5, rtol=1e-6), (fast - full).abs().max()


def test_a_one_layer_model(tmp_path: Path) -> None:
    path = build_tiny_cross_encoder(tmp_path / "one", num_layers=1, initializer_range=0.3)
    reranker = CrossEncoderReranker(str(path), device="cpu")
    loaded = reranker.runner.load()
    batch = padded_batch(reranker)
    with torch.inference_mode():
        full = loaded.model(**batch).logits.view(-1)
        fast = loaded.head.forward(batch)
    assert torch.allclose(fast, full, atol=1e-5, rtol=1e-6), (fast - full).abs().max()


def test_switched_off_by_the_environment(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DISABLE_ENV, "1")
    reranker = CrossEncoderReranker(str(tiny_models["ce"]), device="cpu")
    assert reranker.runner.load().head.forward.fast is None
    assert len(reranker.rerank(QUERY, DOCS)) == len(DOCS)


def test_unknown_architectures_keep_their_own_forward() -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=50, dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=1
    )
    assert cls_only_forward(DistilBertForSequenceClassification(config)) is None

    class BertForSequenceClassification:  # same name, not transformers' class
        config = None

    assert cls_only_forward(BertForSequenceClassification()) is None
