"""The ``milvus-rerank`` command line: its parser and ``main``.

The only module that parses arguments: the commands (``milvus_rerank.app.commands``) get the
parsed namespace. ``serve``'s limit flags, their defaults and help come from ``ServeLimits``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from milvus_rerank._version import __version__
from milvus_rerank.app.commands import (
    cmd_demo,
    cmd_eval,
    cmd_rerank,
    cmd_serve,
    local_keys,
    open_reranker,
)
from milvus_rerank.app.serve.limits import MAX_WAIT_MS, flag_fields
from milvus_rerank.core.errors import RerankError
from milvus_rerank.core.registry import PROVIDERS, providers_taking
from milvus_rerank.providers.local.passages import (
    DEFAULT_MAX_PASSAGES,
    DEFAULT_PASSAGE_OVERLAP,
    LONG_DOCUMENTS,
)

__all__ = ["main", "make_parser", "open_reranker"]

#: The exit status of a command interrupted by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def _positive_int(text: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _count(text: str) -> int:
    """An int of at least 0."""
    return _positive_int(text, minimum=0)


def _number(text: str, ok: Callable[[float], bool], requirement: str) -> float:
    """A finite number that passes ``ok``, else argparse's error saying ``requirement``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"{requirement}, got {text}")
    return value


def _positive_float(text: str) -> float:
    return _number(text, lambda v: v > 0, "must be a positive number")


def _wait_ms(text: str) -> float:
    """A batching wait in milliseconds: 0 to ``MAX_WAIT_MS`` (longer only stalls requests)."""
    return _number(
        text, lambda v: 0 <= v <= MAX_WAIT_MS, f"must be between 0 and {MAX_WAIT_MS:g} ms"
    )


#: The argparse type of each kind of ``ServeLimits`` flag.
_LIMIT_TYPES: dict[str, Callable[[str], object]] = {
    "int": _positive_int,
    "float": _positive_float,
    "wait": _wait_ms,
}


def _host_names(text: str) -> list[str]:
    """A comma-separated list of host names (``*``: any)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no host names in {text!r}")
    return names


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _providers_epilog() -> str:
    lines = ["rerankers (--reranker; default model in brackets):"]
    for key, spec in sorted(PROVIDERS.items()):
        model = spec.default_model or "the server's model; needs --base-url"
        lines.append(f"  {key:<14} {spec.kind:<6} {spec.summary} [{model}]")
    return "\n".join(lines)


def _add_reranker_choice(parser: argparse.ArgumentParser, default: str) -> None:
    """Which reranker, which model, where and with which key."""
    parser.add_argument(
        "--reranker",
        default=default,
        choices=sorted(PROVIDERS),
        help="which reranker (default: %(default)s; see the list below)",
    )
    parser.add_argument(
        "--model",
        help="model name, or a local directory for local rerankers "
        "(default: the reranker's default model, listed below)",
    )
    needs_url = ", ".join(key for key, spec in PROVIDERS.items() if spec.needs_base_url)
    parser.add_argument(
        "--base-url",
        help=f"server root for API rerankers: required for {needs_url}, optional for the "
        "others, e.g. a compatible server (default: the provider's public API)",
    )
    parser.add_argument(
        "--key-env",
        metavar="VAR",
        help="environment variable holding the key an API reranker sends; needed for a "
        "keyed --base-url, since a provider's own variable (COHERE_API_KEY...) goes only to "
        "its public API (default: that variable)",
    )


def _add_local_options(parser: argparse.ArgumentParser) -> None:
    """The local rerankers' device and long-document options."""
    parser.add_argument(
        "--device",
        help=f"torch device for local rerankers ({local_keys()}), e.g. cpu, cuda, cuda:1 "
        "(default: CUDA when available, else the CPU)",
    )
    parser.add_argument(
        "--long-documents",
        choices=LONG_DOCUMENTS,
        help="local rerankers: what a document longer than the model window gets: its "
        "first window (truncate) or its best window's score (max_passage) (default: truncate)",
    )
    parser.add_argument(
        "--passage-overlap",
        type=_count,
        help="local rerankers, max_passage: tokens neighbouring windows share "
        f"(default: {DEFAULT_PASSAGE_OVERLAP})",
    )
    parser.add_argument(
        "--max-passages",
        type=_positive_int,
        help="local rerankers, max_passage: windows scored per document at most; the rest "
        f"is not read (default: {DEFAULT_MAX_PASSAGES})",
    )


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    """What runs a local encoder reranker: torch, or ONNX Runtime (fp32 or int8) on the CPU."""
    from milvus_rerank.providers.local.options import BACKENDS, QUANTIZATIONS

    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="local rerankers: torch (any device) or onnx (ONNX Runtime on the CPU; "
        "cross-encoder and bge) (default: torch)",
    )
    parser.add_argument(
        "--quantization",
        choices=("none", *QUANTIZATIONS),
        type=str.lower,
        help="--backend onnx: int8 runs ONNX Runtime's dynamic int8 quantization of the model "
        "(faster on CPUs, scores move slightly) (default: none)",
    )
    parser.add_argument(
        "--onnx-file",
        metavar="PATH",
        help="--backend onnx: the model's ONNX file to run, relative to the model, e.g. "
        "onnx/model_qint8_avx512_vnni.onnx (default: onnx/model.onnx if shipped, else one "
        "exported with torch and cached)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        help="--backend onnx: threads of one forward pass (default: the CPUs, shared by the "
        "passes that run at once)",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Model options (``MODEL_OPTIONS``), each for the rerankers whose class takes it."""
    from milvus_rerank.providers.local.options import DTYPES

    parser.add_argument(
        "--instruction",
        help="what relevance means for this task, for the rerankers that take an instruction "
        f"({', '.join(providers_taking('instruction'))}; default: each model's reference one)",
    )
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        help="scores as probabilities in [0, 1] (--no-normalize: raw logits), for "
        f"{', '.join(providers_taking('normalize'))} (default: each reranker's own)",
    )
    parser.add_argument(
        "--max-length",
        type=_positive_int,
        help="token limit of a (query, document) pair, for local rerankers (default: the "
        "model's reference value)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help="weights' dtype for local rerankers (default: auto, half precision on CUDA)",
    )
    parser.add_argument(
        "--split-special-tokens",
        action="store_true",
        default=None,
        help="local rerankers: read special-token strings (<|im_end|>, </s>...) in queries, "
        "documents and instructions as plain text, so they cannot inject control tokens; "
        "recommended for serve with untrusted clients (default: off, as the references)",
    )


def _add_reranker_options(parser: argparse.ArgumentParser, default: str) -> None:
    _add_reranker_choice(parser, default)
    _add_local_options(parser)
    _add_backend_options(parser)
    _add_model_options(parser)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``--help`` still shows the full usage)."""

    def error(self, message: str) -> NoReturn:
        """Print ``milvus-rerank <command>: error: ...`` on one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_demo(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--db", help="Milvus Lite file to use (default: a temporary one, removed afterwards)"
    )
    demo.add_argument(
        "--top-k",
        type=_positive_int,
        default=5,
        help="hits to retrieve and rerank (default: %(default)s)",
    )
    demo.set_defaults(func=cmd_demo)


def _add_rerank(rerank: argparse.ArgumentParser) -> None:
    rerank.add_argument("query", help="the query")
    rerank.add_argument(
        "documents", help="JSONL file of documents (objects or strings), or - for stdin"
    )
    rerank.add_argument(
        "--text-field",
        default="text",
        help="the field of each JSON object holding its text (default: %(default)s)",
    )
    rerank.add_argument(
        "--top-n", type=_positive_int, help="keep the best N (default: all of them)"
    )
    rerank.set_defaults(func=cmd_rerank)


def _add_serve(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port (default: %(default)s)")
    serve.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="model name in answers and /health (default: --model, or its folder's name "
        "when it is a local path)",
    )
    serve.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on rerank routes (default: "
        "$MILVUS_RERANK_API_KEY, else none; a non-loopback --host needs one); at least 8 "
        "printable ASCII characters, surrounding whitespace stripped",
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback --host without --api-key (default: refuse)",
    )
    serve.add_argument(
        "--allowed-hosts",
        type=_host_names,
        metavar="NAMES",
        help="comma-separated Host names answered besides localhost and IP addresses, '*' "
        "for any (default: without a key on loopback, only those; else any)",
    )
    for name, default, flag in flag_fields():  # the limits: ServeLimits says it all
        help_text = flag["help"]
        if "default:" not in help_text:
            help_text += " (default: %(default)s)"
        serve.add_argument(
            "--" + name.replace("_", "-"),
            type=_LIMIT_TYPES[flag["kind"]],
            default=default,
            help=help_text,
        )
    serve.set_defaults(func=cmd_serve)


def _add_eval(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument("data", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/*.tsv")
    evaluate.add_argument(
        "--split", default="test", help="qrels split, qrels/SPLIT.tsv (default: %(default)s)"
    )
    evaluate.add_argument(
        "--candidates",
        type=_positive_int,
        default=50,
        help="BM25 hits to rerank per query (default: %(default)s)",
    )
    evaluate.add_argument(
        "--max-queries",
        type=_positive_int,
        help="evaluate only the first N queries (default: all of them)",
    )
    evaluate.set_defaults(func=cmd_eval)


#: The reranker a command uses when ``--reranker`` is not given. The demo's is a small
#: cross-encoder (ms-marco-MiniLM-L-6-v2, about 90 MB), so a first run downloads little and
#: runs fast on a CPU.
DEFAULT_RERANKER = "bge"
DEMO_RERANKER = "cross-encoder"

#: The commands: name, summary, and what adds their own arguments.
_COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("demo", "search Milvus Lite with BM25, then rerank the hits", _add_demo),
    ("rerank", "rerank JSONL documents for a query", _add_rerank),
    ("serve", "serve a reranker over HTTP (Cohere, vLLM/Jina and TEI formats)", _add_serve),
    ("eval", "nDCG@10 and MRR@10 before/after reranking (BEIR format)", _add_eval),
)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``milvus-rerank`` command."""
    epilog = _providers_epilog()
    parser = _Parser(
        prog="milvus-rerank",
        description="Rerank retrieval results, locally or through an API.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what happens (default: warnings only)"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for name, help_text, add_arguments in _COMMANDS:
        command = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_reranker_options(command, DEMO_RERANKER if name == "demo" else DEFAULT_RERANKER)
        add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    2 for bad input or configuration, 130 for Ctrl-C (one line on stderr, no traceback).
    """
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.func(args)
    except RerankError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the error holds
        print(f"milvus-rerank: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"milvus-rerank: interrupted ({args.command})", file=sys.stderr)
        return INTERRUPTED
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
