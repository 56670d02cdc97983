"""Long texts cut before tokenizing, where no text past the cut can change what is read.

A model reads the head of a long text (a window of tokens); tokenizing megabytes to read a
few hundred tokens is waste. ``clip_texts`` cuts a text at a word break well past what can be
read, so the tokens read (and so the scores) are those of the whole text; ``longer_cuts``
grows two cuts until their token counts compare as the whole texts' do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BREAK_CANDIDATES",
    "CHARS_PER_TOKEN",
    "CUT_MARGIN",
    "ClippedText",
    "clip_texts",
    "longer_cuts",
    "word_breaks",
]

#: A long document is first tried cut at this many characters per token the model may read of
#: it (a generous multiple of the ~4 an English token covers; ``serve`` cuts at the same).
CHARS_PER_TOKEN = 32
#: A cut is kept only where it yields this many times the tokens that can be read.
CUT_MARGIN = 2

#: Characters a tokenizer may split words at, tried in turn by ``word_breaks``: spaces, and the
#: full-width punctuation that ends clauses in Chinese and Japanese text, which has no spaces.
BREAK_CANDIDATES = (" ", "\n", "。", "，", "、", "！", "？", "；")


def word_breaks(tokenizer: Any) -> tuple[str, ...]:
    """The ``BREAK_CANDIDATES`` at which ``tokenizer`` splits words before its model runs.

    A character is a break where the fast tokenizer's normalizer and pre-tokenizer cut
    ``"ab<char>cd"`` into pieces with a boundary right before or after it: then no text after
    a break changes how the words before it tokenize. None for a slow tokenizer or one with
    no pre-tokenizer (a Unigram or BPE model over whole runs of text, where a change far
    ahead can reach back).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if pre is None:
        return ()
    normalizer = getattr(backend, "normalizer", None)
    found = []
    for char in BREAK_CANDIDATES:
        text = f"ab{char}cd"
        try:
            if normalizer is not None:
                text = normalizer.normalize_str(text)
            pieces = pre.pre_tokenize_str(text)
        except Exception:  # noqa: BLE001, S112 - an unknown tokenizer: no cut, exact as before
            continue
        at = text.find("cd")
        ends = {end for _, (_, end) in pieces}
        starts = {start for _, (start, _) in pieces}
        if at > 0 and len(pieces) > 1 and (at in starts or at - 1 in ends):
            found.append(char)
    return tuple(found)


class ClippedText(str):
    """A text cut by ``clip_texts``: the cut itself, with the whole text and the cut's tokens.

    It is the cut wherever a ``str`` goes; a family that needs more of the whole text than
    its first tokens (the cross-encoder's ``longest_first``, which compares whole lengths)
    reads ``whole`` (see ``longer_cuts``).
    """

    whole: str
    tokens: int

    @classmethod
    def of(cls, cut: str, whole: str, tokens: int) -> ClippedText:
        """``cut`` of ``whole``, which alone tokenizes to ``tokens`` tokens."""
        text = cls(cut)
        text.whole, text.tokens = whole, tokens
        return text


def _count(tokenizer: Any, texts: Sequence[str], split: bool) -> list[int]:
    """Tokens of each text alone, without added special tokens."""
    if not texts:
        return []
    ids = tokenizer(
        list(texts),
        add_special_tokens=False,
        return_attention_mask=False,
        verbose=False,  # whole on purpose: no "longer than the maximum" warning
        split_special_tokens=split,
    )["input_ids"]
    return [len(i) for i in ids]


def _cut_at_break(text: str, breaks: Sequence[str], limit: int) -> str | None:
    """``text`` up to its last break before ``limit`` characters (None: no break there)."""
    end = max(text.rfind(b, 0, limit + 1) for b in breaks)
    return text[:end] if end > 0 else None


def clip_texts(tokenizer: Any, texts: Sequence[str], read: int, split: bool) -> list[str]:
    """``texts``, each long one cut where none of the ``read`` tokens read of it can change.

    A model reading the head of a text (the tokenizer's right-side truncation) reads at most
    ``read`` of its tokens. Rather than tokenize megabytes to read those, a longer text is
    cut at the last break (a character the tokenizer splits words at, see ``word_breaks``)
    before ``CHARS_PER_TOKEN * read`` characters, and the cut is kept only if it alone
    tokenizes to ``CUT_MARGIN * read`` tokens or more. Words before a break tokenize the same
    whatever follows it, so the text's first ``read`` tokens, and so the rows and scores, are
    those of the whole text. A cut short of that (whitespace runs, long tokens) grows fourfold
    until it is kept or reaches the whole text; a text with no break to cut at (a tokenizer
    that splits no words first, or one long word) is tokenized whole, as before. A kept cut
    is a ``ClippedText``.
    """
    out = list(texts)
    if getattr(tokenizer, "truncation_side", "right") != "right":
        return out  # the tail is what is read
    breaks = word_breaks(tokenizer)
    if not breaks:
        return out
    limit = CHARS_PER_TOKEN * read
    pending = [i for i, t in enumerate(out) if len(t) > limit]
    while pending:
        cuts = {i: c for i in pending if (c := _cut_at_break(out[i], breaks, limit)) is not None}
        counts = _count(tokenizer, list(cuts.values()), split)
        kept = set()
        for (i, cut), tokens in zip(cuts.items(), counts, strict=True):
            if tokens >= CUT_MARGIN * read:
                out[i] = ClippedText.of(cut, texts[i], tokens)
                kept.add(i)
        limit *= 4
        pending = [i for i in pending if i not in kept and len(out[i]) > limit]
    return out


def longer_cuts(tokenizer: Any, first: str, second: str, split: bool) -> tuple[str, str]:
    """Cuts of two texts whose token counts compare as the whole texts' do.

    ``first`` and ``second`` may be ``ClippedText`` cuts: for each, a longer cut (or the whole
    text) replaces it until the counts decide whether the whole ``first`` has more tokens than
    the whole ``second``. A cut's head tokens are the whole text's (``clip_texts``), and its
    count never exceeds the whole text's; the side with fewer tokens grows, fourfold each
    time, so the work is bounded by the shorter text.
    """
    breaks = word_breaks(tokenizer)
    sides = [_Side.of(tokenizer, text, split) for text in (first, second)]
    while True:
        a, b = sides
        if (a.whole and b.whole) or (b.whole and a.tokens > b.tokens):
            break
        if a.whole and b.tokens >= a.tokens:
            break
        side = a if not a.whole and (a.tokens <= b.tokens or b.whole) else b
        side.grow(tokenizer, breaks, split)
    return sides[0].cut, sides[1].cut


@dataclass
class _Side:
    """A text being read further for ``longer_cuts``: its cut so far and the cut's tokens."""

    text: str
    cut: str
    tokens: int
    limit: int

    @property
    def whole(self) -> bool:
        return len(self.cut) == len(self.text)

    @classmethod
    def of(cls, tokenizer: Any, text: str, split: bool) -> _Side:
        if isinstance(text, ClippedText):
            return cls(text.whole, str(text), text.tokens, len(text))
        return cls(str(text), str(text), _count(tokenizer, [text], split)[0], len(text))

    def grow(self, tokenizer: Any, breaks: Sequence[str], split: bool) -> None:
        """A cut at a break before four times the characters, or the whole text."""
        self.limit *= 4
        cut = (
            self.text
            if len(self.text) <= self.limit
            else _cut_at_break(self.text, breaks, self.limit)
        )
        if cut is not None and len(cut) > len(self.cut):
            self.cut, self.tokens = cut, _count(tokenizer, [cut], split)[0]
