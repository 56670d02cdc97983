"""BAAI BGE rerankers (``BAAI/bge-reranker-v2-m3`` family), scored like FlagEmbedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from typing_extensions import Unpack

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.providers.local.family import (
    Located,
    Rows,
    SequenceClassifierFamily,
    controls_as_unk,
)
from milvus_rerank.providers.local.options import LocalOptions, check_bool, check_query_max_length
from milvus_rerank.providers.local.reranker import LocalReranker

__all__ = ["BGEFamily", "BGEReranker"]

#: FlagEmbedding's ``FlagReranker`` default pair limit.
BGE_MAX_LENGTH = 512


class BGEFamily(SequenceClassifierFamily):
    """FlagEmbedding's ``FlagReranker`` tokenization (``only_second``) and sigmoid option.

    The query alone is cut to ``query_max_length`` (3/4 of ``max_length`` by default), each
    passage to ``max_length``, then the pair with special tokens is cut to ``max_length`` by
    shortening the passage only.
    """

    def __init__(self, *, normalize: bool = True, query_max_length: int | None = None) -> None:
        self.normalize = check_bool("normalize", normalize)
        self.query_max_length = check_query_max_length(query_max_length)

    def default_max_length(self, tokenizer: Any, config: Any) -> int:
        """FlagEmbedding's default, 512."""
        return BGE_MAX_LENGTH

    def query_limit(self, max_length: int) -> int:
        """Tokens the query alone may keep."""
        return self.query_max_length or max_length * 3 // 4

    def query_tokens_read(self, max_length: int) -> int | None:
        """The query alone is cut to ``query_limit`` tokens, from its head."""
        return self.query_limit(max_length)

    def check_max_length(self, tokenizer: Any, max_length: int) -> None:
        """A query at its full budget plus the special tokens must leave room for a passage.

        FlagEmbedding silently exceeds ``max_length`` there (the passage cannot shrink enough);
        we refuse such a limit at load instead.
        """
        specials = int(tokenizer.num_special_tokens_to_add(pair=True))
        query_limit = self.query_limit(max_length)
        if query_limit + specials >= max_length:
            raise ConfigurationError(
                f"max_length={max_length} leaves no room for a passage: a query may keep "
                f"query_max_length={query_limit} tokens and a pair adds {specials} special "
                f"tokens; use max_length > {query_limit + specials} or a smaller "
                "query_max_length"
            )

    def encode(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> Rows:
        """The rows of ``locate``: locating the passages costs nothing more."""
        return [item.row for item in self.locate(tokenizer, queries, documents, max_length)]

    def locate(
        self, tokenizer: Any, queries: Sequence[str], documents: Sequence[str], max_length: int
    ) -> list[Located]:
        """Pairs grouped by query, each group tokenized like ``FlagReranker.compute_score``.

        Each row comes with the passage's whole token ids and its place in the row: the
        passage is tokenized whole either way (FlagEmbedding truncates after tokenizing).
        """
        located: list[Located] = [Located({}) for _ in documents]
        groups: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault(query, []).append(i)
        for query, positions in groups.items():
            encoded = self._encode_group(
                tokenizer, query, [documents[i] for i in positions], max_length
            )
            for i, item in zip(positions, encoded, strict=True):
                located[i] = item
        return located

    def _encode_group(
        self, tokenizer: Any, query: str, documents: Sequence[str], max_length: int
    ) -> list[Located]:
        backend = tokenizer.backend_tokenizer
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = self.split_special_tokens  # user text only, here
        q = backend.encode(query, add_special_tokens=False)
        q.truncate(self.query_limit(max_length))
        specials = backend.num_special_tokens_to_add(True)
        docs = backend.encode_batch(list(documents), add_special_tokens=False)
        want_types = "token_type_ids" in tokenizer.model_input_names
        controls = self.user_controls(tokenizer)
        located: list[Located] = []
        for d in docs:
            ids = d.ids  # the whole passage, before truncation
            d.truncate(max_length)
            excess = len(q.ids) + len(d.ids) + specials - max_length
            if 0 < excess < len(d.ids):
                d.truncate(len(d.ids) - excess)
            # An empty passage tokenizes like the query alone, as the reference does on
            # transformers 5 (its tokenizer call drops an empty second text).
            pair = backend.post_process(q, d if d.ids else None, add_special_tokens=True)
            row = {"input_ids": pair.ids}
            if controls is not None:  # what XLM-R's vocabulary matched all the same
                row["input_ids"] = controls_as_unk(pair.ids, controls, pair.sequence_ids)
                ids = controls_as_unk(ids, controls)
            if want_types:
                row["token_type_ids"] = pair.type_ids
            if len(d.ids) < len(ids):
                start = pair.sequence_ids.index(1)
                located.append(Located(row, ids, start, start + len(d.ids)))
            else:
                located.append(Located(row))
        return located

    def describe(self) -> dict[str, Any]:
        """Family options for the repr."""
        return {"normalize": self.normalize, "query_max_length": self.query_max_length}


class BGEReranker(LocalReranker):
    """A BGE reranker scored exactly like ``FlagEmbedding.FlagReranker.compute_score``.

    Scores are raw logits, or their sigmoid in [0, 1] when ``normalize=True`` (the default
    here, since a probability-like score is what RAG thresholds expect). ``max_length``
    defaults to FlagEmbedding's 512.

    Args:
        model_name: Hugging Face hub name or local directory.
        normalize: Apply the sigmoid to the logits.
        query_max_length: Token limit of the query alone (default ``max_length * 3 // 4``).
        **options: The options of every local reranker (``LocalOptions``): device, dtype,
            use_fp16, batch_size, max_length, max_tokens_per_batch, trust_remote_code,
            revision, cache_dir, local_files_only, long_documents ("max_passage": a long
            document scores as its best window), passage_overlap, max_passages,
            split_special_tokens (special-token strings in text read as plain text).
    """

    provider: ClassVar[str] = "bge"
    default_model: ClassVar[str] = "BAAI/bge-reranker-v2-m3"
    tiny_builder: ClassVar[str | None] = "build_tiny_bge"
    family: BGEFamily

    def __init__(
        self,
        model_name: str = default_model,
        *,
        normalize: bool = True,
        query_max_length: int | None = None,
        **options: Unpack[LocalOptions],
    ) -> None:
        family = BGEFamily(normalize=normalize, query_max_length=query_max_length)
        super().__init__(model_name, family, **options)
        self.normalize = normalize
