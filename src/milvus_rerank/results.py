"""The value a reranker returns for each kept document."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RerankResult"]


@dataclass(frozen=True, slots=True)
class RerankResult:
    """One reranked document.

    The field names match pymilvus-model's ``RerankResult``, so code that reads
    ``result.text``, ``result.score`` and ``result.index`` keeps working.

    Attributes:
        index: Position of the document in the list given to ``rerank``.
        score: Relevance score (higher is more relevant), a plain Python ``float``.
        text: The document text, as given.
    """

    index: int
    score: float
    text: str

    def to_dict(self) -> dict[str, object]:
        """The result as a JSON-ready dict."""
        return {"index": self.index, "score": self.score, "text": self.text}
