"""Local rerankers score exactly like their reference libraries on the same weights."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from milvus_rerank import BGEReranker, ConfigurationError, CrossEncoderReranker  # noqa: E402
from milvus_rerank.core.results import RerankResult  # noqa: E402
from milvus_rerank.providers.local.family import Head, ModelFamily, ModelSource  # noqa: E402
from milvus_rerank.providers.local.reranker import LocalReranker  # noqa: E402
from milvus_rerank.providers.local.runner import plan_batches  # noqa: E402

QUERY = "what event in 1956 marked the birth of artificial intelligence"
DOCS = [
    "the dartmouth conference in 1956 marked the birth of artificial intelligence",
    "paris is the capital of france",
    "ai",
    "",
    "alan turing proposed a test of machine intelligence " * 3,
    "milvus is a vector database for similarity search " * 40,  # longer than max_length
    "Unicode: café, naïve, 東京, emoji 🚀 and RTL שלום",
    "berlin is the capital of germany " * 12,
]
LONG_QUERY = "what is the history of artificial intelligence research " * 12
TOL = 1e-5


def _close(ours: list[float], ref: list[float]) -> None:
    assert len(ours) == len(ref)
    worst = max(abs(a - float(b)) for a, b in zip(ours, ref, strict=True))
    assert worst <= TOL, f"max difference {worst:.2e} > {TOL}"


@pytest.fixture(autouse=True)
def _quiet_references() -> None:
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)


@pytest.mark.parametrize("checkpoint", ["ce", "ce_identity"])
@pytest.mark.parametrize("batch_size", [1, 3, 32])
@pytest.mark.parametrize("max_length", [None, 24])
@pytest.mark.parametrize("query", [QUERY, LONG_QUERY])
def test_cross_encoder_matches_sentence_transformers(
    tiny_models: dict[str, Path],
    checkpoint: str,
    batch_size: int,
    max_length: int | None,
    query: str,
) -> None:
    from sentence_transformers import CrossEncoder

    path = str(tiny_models[checkpoint])
    reference = CrossEncoder(path, max_length=max_length, device="cpu")
    expected = reference.predict([(query, d) for d in DOCS], batch_size=batch_size)
    ours = CrossEncoderReranker(path, batch_size=batch_size, max_length=max_length, device="cpu")
    _close(ours._score(query, DOCS), list(expected))


def test_cross_encoder_activation_follows_the_config(tiny_models: dict[str, Path]) -> None:
    sigmoid = CrossEncoderReranker(str(tiny_models["ce"]))._score(QUERY, DOCS)
    raw = CrossEncoderReranker(str(tiny_models["ce_identity"]))._score(QUERY, DOCS)
    assert all(0.0 < s < 1.0 for s in sigmoid)
    assert any(s < 0.0 or s > 1.0 for s in raw), "an Identity checkpoint gives raw logits"
    forced = CrossEncoderReranker(str(tiny_models["ce_identity"]), activation="sigmoid")
    assert all(0.0 < s < 1.0 for s in forced._score(QUERY, DOCS))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 32])
@pytest.mark.parametrize("max_length", [512, 32])
@pytest.mark.parametrize("query", [QUERY, LONG_QUERY])
def test_bge_matches_flag_reranker(
    tiny_models: dict[str, Path], normalize: bool, batch_size: int, max_length: int, query: str
) -> None:
    from FlagEmbedding import FlagReranker

    path = str(tiny_models["bge"])
    reference = FlagReranker(path, use_fp16=False, devices="cpu", batch_size=batch_size)
    expected = reference.compute_score(
        [(query, d) for d in DOCS], normalize=normalize, max_length=max_length
    )
    ours = BGEReranker(
        path, normalize=normalize, batch_size=batch_size, max_length=max_length, device="cpu"
    )
    _close(ours._score(query, DOCS), expected)


#: A query past 256 tokens of the tiny BGE vocabulary (one token a word), under 384.
QUERY_300 = "what is the history of artificial intelligence research " * 38


@pytest.mark.parametrize("normalize", [False, True])
def test_bge_query_max_length_256_matches_pymilvus_models_flag_reranker(
    tiny_models: dict[str, Path], normalize: bool
) -> None:
    """pymilvus-model's BGERerankFunction runs FlagReranker with query_max_length=256."""
    from FlagEmbedding import FlagReranker

    path = str(tiny_models["bge"])
    pairs = [(QUERY_300, d) for d in DOCS]
    reference = FlagReranker(path, use_fp16=False, devices="cpu", query_max_length=256)
    expected = reference.compute_score(pairs, normalize=normalize)
    ours = BGEReranker(path, normalize=normalize, query_max_length=256, device="cpu")
    _close(ours._score(QUERY_300, DOCS), expected)
    default = BGEReranker(path, normalize=normalize, device="cpu")._score(QUERY_300, DOCS)
    flag_default = FlagReranker(path, use_fp16=False, devices="cpu").compute_score(
        pairs, normalize=normalize
    )
    _close(default, flag_default)  # FlagEmbedding's own default: 3/4 of max_length, 384
    assert max(abs(a - b) for a, b in zip(default, expected, strict=True)) > TOL, (
        "the query is long enough for 256 and 384 to differ"
    )


def test_bge_tokenizes_unknown_characters_once(tiny_models: dict[str, Path]) -> None:
    """Text with <unk> pieces: we tokenize once, as FlagEmbedding means to (and does on
    transformers 4); on transformers 5 its compat path decodes ids to text and tokenizes
    again, which can move word boundaries around <unk>. Pin our behaviour down."""
    reranker = BGEReranker(str(tiny_models["bge"]), max_length=64)
    tokenizer = reranker.runner.load().tokenizer
    doc = "snow \u2603 man"  # the snowman is in no tiny vocabulary
    q_ids = tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    d_ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id in d_ids
    expected = [0, *q_ids, 2, 2, *d_ids, 2]
    assert reranker.runner.encode_pairs(QUERY, [doc])[0]["input_ids"] == expected


def test_token_budget_batches_do_not_change_scores(tiny_models: dict[str, Path]) -> None:
    path = str(tiny_models["bge"])
    plain = BGEReranker(path)._score(QUERY, DOCS)
    budgeted = BGEReranker(path, max_tokens_per_batch=64)._score(QUERY, DOCS)
    _close(budgeted, plain)


def test_rerank_orders_by_reference_scores(tiny_models: dict[str, Path]) -> None:
    reranker = CrossEncoderReranker(str(tiny_models["ce"]))
    scores = reranker._score(QUERY, DOCS)
    results = reranker.rerank(QUERY, DOCS, top_n=3)
    assert [r.index for r in results] == sorted(range(len(DOCS)), key=lambda i: -scores[i])[:3]
    assert [r.text for r in results] == [DOCS[r.index] for r in results]


async def test_arerank_runs_in_a_thread_and_agrees(tiny_models: dict[str, Path]) -> None:
    reranker = BGEReranker(str(tiny_models["bge"]))
    assert await reranker.arerank(QUERY, DOCS) == reranker.rerank(QUERY, DOCS)


@pytest.mark.parametrize("kind", ["bge", "ce"])
async def test_usage_counts_the_tokens_each_pair_read(
    tiny_models: dict[str, Path], kind: str
) -> None:
    cls = BGEReranker if kind == "bge" else CrossEncoderReranker
    reranker = cls(str(tiny_models[kind]), max_length=24)
    rows = reranker.runner.encode_pairs(QUERY, DOCS)
    expected = sum(len(row["input_ids"]) for row in rows)
    assert all(len(row["input_ids"]) <= 24 for row in rows)  # truncated pairs count as read
    response = reranker.rerank_response(QUERY, DOCS, top_n=2)
    assert response.usage.tokens == expected and response.usage.requests == 0
    assert response.results == reranker.rerank(QUERY, DOCS, top_n=2)
    assert (await reranker.arerank_response(QUERY, DOCS)).usage.tokens == expected
    assert reranker.rerank_response(QUERY, DOCS[:1]).usage.tokens == len(rows[0]["input_ids"])


def test_model_loads_once_lazily_and_thread_safely(tiny_models: dict[str, Path]) -> None:
    reranker = CrossEncoderReranker(str(tiny_models["ce"]))
    assert not reranker.runner.loaded
    serial = reranker.rerank(QUERY, DOCS)
    seen: list[object] = []
    results: list[list[RerankResult]] = []
    fresh = CrossEncoderReranker(str(tiny_models["ce"]))

    def work() -> None:
        results.append(fresh.rerank(QUERY, DOCS))
        seen.append(fresh.runner.load().model)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in seen}) == 1
    # The threads' pairs share forward passes (cross-call batching): float noise at most.
    for ranked in results:
        assert [r.index for r in ranked] == [r.index for r in serial]
        assert [r.score for r in ranked] == pytest.approx([r.score for r in serial], abs=1e-5)


def test_trust_remote_code_is_off_by_default(tiny_models: dict[str, Path]) -> None:
    assert CrossEncoderReranker(str(tiny_models["ce"])).runner.trust_remote_code is False
    assert BGEReranker(str(tiny_models["bge"])).runner.trust_remote_code is False


def test_unknown_model_name_is_one_clear_configuration_error() -> None:
    reranker = CrossEncoderReranker("no-such-org/no-such-reranker")
    with pytest.raises(ConfigurationError) as info:
        reranker.rerank("q", ["d"])
    message = str(info.value)
    assert "'no-such-org/no-such-reranker'" in message
    assert "not a local directory" in message and "cache" in message
    assert "model_name" in message


def test_bad_directory_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match=str(tmp_path)):
        BGEReranker(str(tmp_path)).rerank("q", ["d"])


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"batch_size": 2.5}, {"max_length": -1}, {"max_tokens_per_batch": True}],
)
def test_bad_options_are_configuration_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(kwargs))):
        CrossEncoderReranker("x", **kwargs)  # type: ignore[arg-type]


def test_bad_device_is_a_configuration_error(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError, match="not-a-device"):
        CrossEncoderReranker(str(tiny_models["ce"]), device="not-a-device").rerank("q", ["d"])


def test_multi_label_models_are_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

    path = build_tiny_cross_encoder(tmp_path / "m")
    config = BertConfig.from_pretrained(path)
    config.num_labels = 3
    BertForSequenceClassification(config).save_pretrained(path)
    with pytest.raises(ConfigurationError, match="3 output labels"):
        CrossEncoderReranker(str(path)).rerank("q", ["d"])


def test_plan_batches_respects_both_bounds() -> None:
    lengths = [100, 90, 50, 50, 10, 10, 10, 10, 10]
    assert plan_batches(lengths, 4, None) == [slice(0, 4), slice(4, 8), slice(8, 12)]
    batches = plan_batches(lengths, 4, 200)
    assert batches[0] == slice(0, 2)
    covered = [i for s in batches for i in range(s.start, min(s.stop, len(lengths)))]
    assert covered == list(range(len(lengths)))
    assert plan_batches([1000], 8, 10) == [slice(0, 1)]


def test_repr_shows_settings(tiny_models: dict[str, Path]) -> None:
    text = repr(BGEReranker(str(tiny_models["bge"]), batch_size=4))
    assert text.startswith("BGEReranker(model_name=") and "batch_size=4" in text


def test_token_budget_defaults_by_device() -> None:
    assert CrossEncoderReranker("x").runner.token_budget("cpu") == 1024
    assert CrossEncoderReranker("x").runner.token_budget("cuda:0") is None
    assert BGEReranker("x", max_tokens_per_batch=300).runner.token_budget("cuda") == 300
    assert CrossEncoderReranker("x", backend="onnx").runner.token_budget("cpu") == 512
    onnx = CrossEncoderReranker("x", backend="onnx", max_tokens_per_batch=2048)
    assert onnx.runner.token_budget("cpu") == 2048


class _LastTokenFamily(ModelFamily):
    """A decoder-only family in the shape of the LLM rerankers: causal LM, left padding, the
    score from two label tokens' logits at the last position (here ``logit(a) - logit(b)``)."""

    auto_class = "AutoModelForCausalLM"
    padding_side = "left"
    half_dtype = "bfloat16"

    def default_max_length(self, tokenizer: Any, config: Any) -> int:
        return 200

    def encode(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> list[dict[str, list[int]]]:
        ids = tokenizer(
            list(queries), list(documents), truncation="longest_first", max_length=max_length
        )["input_ids"]
        return [{"input_ids": row} for row in ids]

    def bind(self, model: Any, tokenizer: Any, source: ModelSource) -> Head:
        import torch

        labels = tokenizer.convert_tokens_to_ids(["a", "b"])
        base, lm_head = model.get_decoder(), model.get_output_embeddings()

        def forward(batch: dict[str, Any]) -> Any:
            hidden = base(**batch).last_hidden_state[:, -1]
            logits = lm_head(hidden)[:, labels].float()
            return logits[:, 0] - logits[:, 1]

        return Head(forward, lambda scores: [torch.sigmoid(torch.tensor(s)).item() for s in scores])


def test_a_causal_family_plugs_in_without_runner_changes(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["ce"])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).eval().save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")

    reranker = LocalReranker(str(tmp_path / "lm"), _LastTokenFamily(), batch_size=3)
    got = reranker.score_pairs([QUERY] * len(DOCS), DOCS)
    loaded = reranker.runner.load()
    assert type(loaded.model).__name__ == "Qwen2ForCausalLM"
    assert loaded.max_length == 200
    rows = reranker.runner.encode_pairs(QUERY, DOCS)
    assert len(rows[0]["input_ids"]) > len(rows[1]["input_ids"])
    batch = reranker.runner.collate(rows[:2])
    assert batch["attention_mask"][:, -1].tolist() == [1, 1], "left padding"
    assert batch["attention_mask"][:, 0].tolist() == [1, 0], "the shorter row is padded"
    labels = tokenizer.convert_tokens_to_ids(["a", "b"])
    expected = []
    with torch.inference_mode():  # one unpadded pair at a time, through the model's own forward
        for row in rows:
            logits = loaded.model(input_ids=torch.tensor([row["input_ids"]])).logits[0, -1]
            expected.append(torch.sigmoid(logits[labels[0]] - logits[labels[1]]).item())
    _close(got, expected)
    with pytest.raises(ConfigurationError, match="max_length=257"):
        LocalReranker(str(tmp_path / "lm"), _LastTokenFamily(), max_length=257).load()


def _no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any weights load: a refused checkpoint is read from config.json only."""
    import transformers

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("weights loaded before the checkpoint was checked")

    for name in ("AutoModelForSequenceClassification", "AutoModelForCausalLM"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)


def test_a_wrong_family_checkpoint_is_refused_before_its_weights_load(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from milvus_rerank import Qwen3Reranker
    from milvus_rerank.providers.local.tiny import build_tiny_qwen3_reranker

    qwen3 = build_tiny_qwen3_reranker(tmp_path / "qwen3", num_layers=1)
    _no_weights(monkeypatch)
    with pytest.raises(ConfigurationError, match="is a 'bert' checkpoint"):
        Qwen3Reranker(str(tiny_models["ce"]), device="cpu").load()
    for cls in (CrossEncoderReranker, BGEReranker):  # named as what it is, not by its labels
        with pytest.raises(ConfigurationError, match="'qwen3' causal LM checkpoint.*qwen3"):
            cls(str(qwen3), device="cpu").load()


def test_a_multi_label_checkpoint_is_refused_before_its_weights_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import BertConfig

    from milvus_rerank.providers.local.tiny import build_tiny_cross_encoder

    path = build_tiny_cross_encoder(tmp_path / "m", num_layers=1)
    config = BertConfig.from_pretrained(path)
    config.num_labels = 3
    config.save_pretrained(path)  # the config says it: no weights need reading
    _no_weights(monkeypatch)
    with pytest.raises(ConfigurationError, match="3 output labels"):
        CrossEncoderReranker(str(path), device="cpu").load()


def test_weights_of_another_model_under_a_borrowed_config_are_refused(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from milvus_rerank.providers.local.tiny import build_tiny_qwen3_reranker

    # A BERT cross-encoder's config and tokenizer beside a Qwen3 checkpoint's weights: every
    # BERT weight would be random (before: it loaded and ranked, or crashed in the embedding).
    qwen3 = build_tiny_qwen3_reranker(tmp_path / "qwen3", num_layers=1)
    borrowed = tmp_path / "borrowed"
    shutil.copytree(tiny_models["ce"], borrowed)
    for weights in borrowed.glob("*.safetensors"):
        weights.unlink()
    shutil.copy(qwen3 / "model.safetensors", borrowed / "model.safetensors")
    with pytest.raises(ConfigurationError, match="100% of the parameters.*config.json"):
        CrossEncoderReranker(str(borrowed), device="cpu").load()
    # A checkpoint missing only its head loads, with transformers' warning, as the references.
    from transformers import BertModel

    base = tmp_path / "base"
    shutil.copytree(tiny_models["ce"], base)
    BertModel.from_pretrained(tiny_models["ce"]).save_pretrained(base)
    (base / "config.json").write_text((tiny_models["ce"] / "config.json").read_text())
    assert len(CrossEncoderReranker(str(base), device="cpu").rerank("q", ["a", "b"])) == 2
