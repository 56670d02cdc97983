"""Long documents scored by their best passage: one windowing rule for every local family.

With ``long_documents="max_passage"`` a document that does not fit beside its query is cut into
overlapping windows of document tokens; each window is scored in the query's row, and the
document's score is its best window's (Cohere's contract for its own chunking). A document
that fits is one row, the very row truncation scores.

Windows are taken over the document's token ids, as the family tokenized it inside the row,
not over text that is decoded and tokenized again: decoding does not round-trip (byte-level
pieces, normalization, ``<unk>``), and the first window would then differ from what truncation
scores. Each family says where its document sits in its row (``ModelFamily.locate``); every
window is that row with the window's tokens in place of the kept ones, so the query part, the
special tokens and any prompt around the document stay exactly as the family wrote them, and
the window is as long as the part truncation kept (the family's own rule for how much fits).

Windows start every ``window - overlap`` tokens; the last one is moved back to end at the
document's end, so no window is a short tail scored on a few tokens. ``overlap`` is capped at
half a window, so the work stays bounded for short windows.
"""

from __future__ import annotations

from typing import Literal

from milvus_rerank.providers.local.family import Located, Rows

__all__ = [
    "DEFAULT_MAX_PASSAGES",
    "DEFAULT_PASSAGE_OVERLAP",
    "LONG_DOCUMENTS",
    "LongDocuments",
    "passage_rows",
    "passage_spans",
]

LongDocuments = Literal["truncate", "max_passage"]
LONG_DOCUMENTS: tuple[LongDocuments, ...] = ("truncate", "max_passage")
#: Tokens shared by neighbouring windows: a sentence or two (English sentences run 15-30
#: tokens), so a passage cut by one window boundary is whole in the next window; at a
#: 512-token window it adds about 14% more rows. SiliconFlow's ``overlap_tokens`` allows 0-80.
DEFAULT_PASSAGE_OVERLAP = 64
#: Windows scored per document at most, past which the rest of the document is dropped:
#: Cohere's v1 ``max_chunks_per_doc`` default, and it bounds a request's work to 10 times
#: its truncated cost.
DEFAULT_MAX_PASSAGES = 10


def passage_spans(length: int, window: int, overlap: int, max_passages: int) -> list[range]:
    """Token ranges of the windows over a ``length``-token document, first to last.

    Windows hold ``window`` tokens and start every ``window - min(overlap, window // 2)``
    tokens; the last is moved back to end at the document's end. At most ``max_passages``
    windows are returned; past them the document is not read.
    """
    if length <= window:
        return [range(length)]
    step = window - min(overlap, window // 2)
    starts = list(range(0, length - window, step))[:max_passages]
    if len(starts) < max_passages:
        starts.append(length - window)  # the tail, a full window ending at the last token
    return [range(start, start + window) for start in starts]


def passage_rows(located: Located, overlap: int, max_passages: int) -> Rows:
    """The rows one pair is scored over: its row, then one per further window of its document.

    The first window is the part truncation kept, so the first row is ``located.row`` itself.
    A pair whose document fits, was not located, or left no room beside the query (nothing
    kept) is its one row.
    """
    row, document = located.row, located.document
    start, stop = located.start, located.stop
    kept = stop - start
    if kept < 1 or len(document) <= kept:
        return [row]
    ids = row["input_ids"]
    if ids[start:stop] != list(document[:kept]):
        return [row]  # not where the family said: never score a row it did not mean
    rows = [row]
    for span in passage_spans(len(document), kept, overlap, max_passages)[1:]:
        window = list(document[span.start : span.stop])
        rows.append(
            {
                name: values[:start]
                + (window if name == "input_ids" else [values[start]] * len(window))
                + values[stop:]
                for name, values in row.items()
            }
        )
    return rows
