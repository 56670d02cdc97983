"""A forward pass that skips what a cross-encoder throws away.

A BERT or XLM-R sequence classifier reads its last layer at one position, ``[CLS]``; every other
position of that layer is computed and discarded. This forward runs the encoder's first layers
unchanged, then the last layer for ``[CLS]`` alone (keys and values still over every token), and
the model's own pooler and classifier: the same logits (to float rounding, about 1e-7) with one
layer's attention queries, output projection and feed-forward done for one row instead of all.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

__all__ = ["DISABLE_ENV", "cls_only_forward"]

#: Set to 1 to always run the model's full forward instead.
DISABLE_ENV = "MILVUS_RERANK_FULL_FORWARD"

# transformers classes whose layout this forward reproduces, and their base model attribute.
_SUPPORTED = {
    "BertForSequenceClassification": "bert",
    "RobertaForSequenceClassification": "roberta",
    "XLMRobertaForSequenceClassification": "roberta",
}


def cls_only_forward(model: Any) -> Callable[..., Any] | None:
    """A ``forward(input_ids, attention_mask, token_type_ids=None) -> logits`` for ``model``.

    None where the model is not one of the stock transformers classes whose layout is known
    (custom code, decoders, relative position embeddings, missing parts) or where
    ``MILVUS_RERANK_FULL_FORWARD=1``: the caller then runs the model's own forward.
    """
    if os.environ.get(DISABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return None
    kind = type(model)
    base_name = _SUPPORTED.get(kind.__name__)
    if base_name is None or not kind.__module__.startswith("transformers."):
        return None
    config = model.config
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return None
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return None
    try:
        base = getattr(model, base_name)
        layers = list(base.encoder.layer)
        last = layers[-1]
        attention = last.attention.self
        heads, size = int(attention.num_attention_heads), int(attention.attention_head_size)
        scale = float(attention.scaling)
        parts = [attention.query, attention.key, attention.value, last.attention.output]
        parts += [last.intermediate, last.output, model.classifier]
        pooler = base.pooler if base_name == "bert" else None
        if base_name == "bert" and (pooler is None or not hasattr(model, "dropout")):
            return None
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    if not all(callable(part) for part in parts):
        return None
    import torch  # loaded already: the model is a torch module

    trunk = _without_last_layer(torch, base, layers)

    def forward(input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = trunk(**inputs, return_dict=True).last_hidden_state  # [batch, length, hidden]
        batch, length, _ = hidden.shape
        first = hidden[:, :1]
        query = attention.query(first).view(batch, 1, heads, size).transpose(1, 2)
        key = attention.key(hidden).view(batch, length, heads, size).transpose(1, 2)
        value = attention.value(hidden).view(batch, length, heads, size).transpose(1, 2)
        keep = attention_mask[:, None, None, :].to(torch.bool)
        context = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=keep, scale=scale
        )
        context = context.transpose(1, 2).reshape(batch, 1, heads * size)
        attended = last.attention.output(context, first)
        out = last.output(last.intermediate(attended), attended)  # [batch, 1, hidden]
        if pooler is not None:
            return model.classifier(model.dropout(pooler(out)))
        return model.classifier(out)

    return forward


def _without_last_layer(torch: Any, base: Any, layers: list[Any]) -> Any:
    """A shallow copy of the base model that shares every weight but runs one layer fewer."""
    trunk = copy.copy(base)
    trunk._modules = dict(base._modules)
    encoder = copy.copy(base.encoder)
    encoder._modules = dict(base.encoder._modules)
    encoder.layer = torch.nn.ModuleList(layers[:-1])
    trunk.encoder = encoder
    if "pooler" in trunk._modules:
        trunk.pooler = None
    return trunk
