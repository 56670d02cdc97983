"""The ``milvus-rerank`` command: ``demo``, ``rerank``, ``serve`` and ``eval``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .base import Reranker
from .errors import ConfigurationError, RerankError
from .registry import PROVIDERS, create_reranker

__all__ = ["build_reranker", "main", "reranker_from_args"]

LOCAL = ("bge", "cross-encoder")


def build_reranker(
    provider: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    device: str | None = None,
    fallback_to_tiny: bool = False,
    out: TextIO | None = None,
) -> tuple[Reranker, bool]:
    """Build a reranker from CLI options; returns it and whether it is a random tiny stand-in.

    With ``fallback_to_tiny``, a local model whose weights cannot be loaded (no hub here, no
    local copy) is replaced by a tiny randomly initialized model of the same architecture,
    built on the spot and announced on ``out`` (stderr by default), so the pipeline still
    runs end to end.
    """
    out = out if out is not None else sys.stderr
    kwargs: dict[str, Any] = {}
    if provider in LOCAL:
        if model is not None:
            kwargs["model_name"] = model
        if device is not None:
            kwargs["device"] = device
    else:
        if model is not None:
            kwargs["model_name"] = model
        if base_url is not None:
            kwargs["base_url"] = base_url
    reranker = create_reranker(provider, **kwargs)
    if provider not in LOCAL:
        return reranker, False
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a command line prints results, not loading bars
    try:
        reranker.load()
        return reranker, False
    except ConfigurationError as exc:
        if not fallback_to_tiny:
            raise
        first_sentence = str(exc).split(". ")[0]
        print(f"note: {first_sentence}.", file=out)
        print(
            "note: to use the real model, download it where the Hugging Face hub is reachable "
            "and pass --model PATH.",
            file=out,
        )
    from .tiny import build_tiny_bge, build_tiny_cross_encoder

    folder = Path(tempfile.mkdtemp(prefix="milvus-rerank-tiny-"))
    build = build_tiny_bge if provider == "bge" else build_tiny_cross_encoder
    path = build(folder / provider, initializer_range=0.2)
    print(
        f"note: continuing with a TINY RANDOMLY INITIALIZED {provider} model built in {path}: "
        "the pipeline is real, its scores are meaningless.",
        file=out,
    )
    kwargs["model_name"] = str(path)
    return create_reranker(provider, **kwargs), True


def _add_reranker_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--reranker",
        default=default,
        choices=sorted(PROVIDERS),
        help=f"which reranker (default: {default})",
    )
    parser.add_argument("--model", help="model name or local path (default: the provider's)")
    parser.add_argument("--base-url", help="server root for vllm, tei or a compatible server")
    parser.add_argument("--device", help="torch device for local models (default: auto)")


def reranker_from_args(
    args: argparse.Namespace, *, fallback_to_tiny: bool = False, out: TextIO | None = None
) -> tuple[Reranker, bool]:
    """``build_reranker`` from the options ``_add_reranker_options`` defines."""
    return build_reranker(
        args.reranker,
        model=args.model,
        base_url=args.base_url,
        device=args.device,
        fallback_to_tiny=fallback_to_tiny,
        out=out,
    )


def _cmd_rerank(args: argparse.Namespace) -> int:
    reranker, _ = reranker_from_args(args)
    source = sys.stdin if args.documents == "-" else open(args.documents, encoding="utf-8")  # noqa: SIM115
    with source:
        rows = [json.loads(line) for line in source if line.strip()]
    texts = [row[args.text_field] if isinstance(row, dict) else row for row in rows]
    with reranker:
        results = reranker.rerank(args.query, texts, top_n=args.top_n)
    for result in results:
        row = rows[result.index]
        record = dict(row) if isinstance(row, dict) else {args.text_field: row}
        record.update({"index": result.index, "score": result.score})
        print(json.dumps(record, ensure_ascii=False))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import run_server

    return run_server(args)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import run_eval

    return run_eval(args)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``milvus-rerank`` command."""
    parser = argparse.ArgumentParser(
        prog="milvus-rerank", description="Rerank retrieval results, locally or through an API."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="search Milvus Lite with BM25, then rerank the hits")
    _add_reranker_options(demo, "bge")
    demo.add_argument("--db", help="Milvus Lite file (default: a temporary one)")
    demo.add_argument("--top-k", type=int, default=5, help="hits to retrieve and rerank")
    demo.set_defaults(func=_cmd_demo)

    rerank = sub.add_parser("rerank", help="rerank JSONL documents for a query")
    _add_reranker_options(rerank, "bge")
    rerank.add_argument("query", help="the query")
    rerank.add_argument("documents", help="JSONL file of documents, or - for stdin")
    rerank.add_argument("--text-field", default="text", help="the field holding the text")
    rerank.add_argument("--top-n", type=int, help="keep the best N (default: all)")
    rerank.set_defaults(func=_cmd_rerank)

    serve = sub.add_parser("serve", help="serve a local reranker over HTTP (Cohere, vLLM, TEI)")
    _add_reranker_options(serve, "bge")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--max-wait-ms", type=float, default=2.0, help="how long a request waits for a batch"
    )
    serve.set_defaults(func=_cmd_serve)

    evaluate = sub.add_parser("eval", help="nDCG@10 and MRR@10 before/after reranking (BEIR)")
    _add_reranker_options(evaluate, "bge")
    evaluate.add_argument("data", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/*.tsv")
    evaluate.add_argument("--split", default="test", help="qrels split (default: test)")
    evaluate.add_argument("--candidates", type=int, default=50, help="BM25 hits to rerank")
    evaluate.add_argument("--max-queries", type=int, help="evaluate only the first N queries")
    evaluate.set_defaults(func=_cmd_eval)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.func(args)
    except RerankError as exc:
        print(f"milvus-rerank: error: {exc}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
