"""The ``milvus-rerank`` command: ``demo``, ``rerank``, ``serve`` and ``eval``.

The only module that parses arguments: it reads the inputs, builds the reranker through the
registry, and hands a ``Reranker`` and plain options to the commands' entry points.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from milvus_rerank._version import __version__
from milvus_rerank.core.base import Reranker, validate_request
from milvus_rerank.core.errors import ConfigurationError, InvalidInputError, RerankError
from milvus_rerank.core.registry import (
    PROVIDERS,
    create_reranker,
    provider_spec,
    providers_taking,
    reranker_class,
)
from milvus_rerank.providers.local.passages import (
    DEFAULT_MAX_PASSAGES,
    DEFAULT_PASSAGE_OVERLAP,
    LONG_DOCUMENTS,
)

__all__ = ["main", "make_parser", "open_reranker"]


def _local_keys() -> str:
    return ", ".join(key for key, spec in PROVIDERS.items() if spec.kind == "local")


#: Model options with a flag of their own (``--max-length`` sets ``max_length``): each goes to
#: the local rerankers whose class takes it, as its constructor says.
MODEL_OPTIONS = ("instruction", "normalize", "max_length", "dtype", "split_special_tokens")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _check_model_options(provider: str, options: Mapping[str, Any]) -> None:
    """Refuse options ``provider``'s class does not take, naming the rerankers that do."""
    from milvus_rerank.providers.local.options import LOCAL_DEFAULTS
    from milvus_rerank.providers.local.reranker import LocalReranker

    cls = reranker_class(provider)
    taken = {*cls.family_options(), *LOCAL_DEFAULTS} if issubclass(cls, LocalReranker) else set()
    for option in options:
        if option not in taken:
            takers = providers_taking(option) if option not in LOCAL_DEFAULTS else []
            who = ", ".join(takers) if takers else f"local rerankers ({_local_keys()})"
            raise ConfigurationError(
                f"{option} ({_flag(option)}) is for {who}; {provider!r} does not take it"
            )


def _reranker_kwargs(
    provider: str,
    model_name: str | None,
    base_url: str | None,
    device: str | None,
    local: dict[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Constructor arguments: ``base_url`` for API rerankers, ``device`` and ``local`` for local.

    ``local`` holds other ``LocalOptions``; options that are None are left out (defaults).
    Model ``options`` go to the rerankers whose class takes them (``_check_model_options``).
    """
    spec = provider_spec(provider)
    kwargs: dict[str, Any] = {}
    if options:
        _check_model_options(provider, options)
        kwargs.update(options)
    local = {"device": device, **(local or {})}
    given = {name: value for name, value in local.items() if value is not None}
    if spec.kind == "local":
        if base_url is not None:
            raise ConfigurationError(
                f"base_url {base_url!r} is for API rerankers; {provider!r} runs a local model"
            )
        if model_name is not None:
            kwargs["model_name"] = model_name
        kwargs.update(given)
    else:
        if given:
            name, value = next(iter(given.items()))
            raise ConfigurationError(
                f"{name} {value!r} is for local rerankers ({_local_keys()}); "
                f"{provider!r} calls an API"
            )
        if model_name is not None:
            kwargs["model_name"] = model_name
        if base_url is not None:
            kwargs["base_url"] = base_url
    return kwargs


def _load(reranker: Reranker, device: str | None) -> Reranker:
    """``reranker.load()``, with an unusable device reported as a ``ConfigurationError``."""
    try:
        return reranker.load()
    except (AssertionError, RuntimeError) as exc:
        # What torch raises today for a device it cannot use ("Torch not compiled with CUDA
        # enabled", "invalid device ordinal"); the local runner is to raise this error itself.
        if device is None:
            raise
        raise ConfigurationError(f"device {device!r} is not available here: {exc}") from None


@contextlib.contextmanager
def open_reranker(
    provider: str,
    *,
    model_name: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    device: str | None = None,
    long_documents: str | None = None,
    passage_overlap: int | None = None,
    max_passages: int | None = None,
    options: Mapping[str, Any] | None = None,
    fallback_to_tiny: bool = False,
    out: TextIO | None = None,
) -> Iterator[tuple[Reranker, bool]]:
    """Build (and, for a local model, load) a reranker; yields it and whether it is a stand-in.

    ``device``, ``long_documents``, ``passage_overlap`` and ``max_passages`` are local
    rerankers' options (``LocalOptions``); None leaves the reranker's default. ``options`` are
    more constructor options (``instruction``, ``normalize``, ``max_length``, ``dtype``...),
    refused with a ``ConfigurationError`` naming the rerankers that take them where
    ``provider``'s class does not. ``api_key`` is an API reranker's key (None: its environment
    variable, for its public API only).

    With ``fallback_to_tiny``, a local model whose weights cannot be loaded (no hub here, no
    local copy) is replaced by a tiny randomly initialized model of the same architecture
    (``build_tiny_checkpoint``), announced on ``out`` (stderr by default), so the pipeline still
    runs end to end. On exit the reranker is closed and the stand-in's folder removed.

    Raises:
        ConfigurationError: an unknown provider, an option the provider does not take, a
            model that cannot be loaded (without the fallback), a device that is not available.
    """
    out = out if out is not None else sys.stderr
    spec = provider_spec(provider)
    local = {
        "long_documents": long_documents,
        "passage_overlap": passage_overlap,
        "max_passages": max_passages,
    }
    kwargs = _reranker_kwargs(provider, model_name, base_url, device, local, options)
    if api_key is not None:
        if spec.kind == "local":
            raise ConfigurationError(f"a key is for API rerankers; {provider!r} runs a local model")
        kwargs["api_key"] = api_key
    reranker = create_reranker(provider, **kwargs)
    if spec.kind == "local" and device is not None:
        from milvus_rerank.providers.local.devices import resolve_device

        # Before the weights load (seconds for a real model), in the command line's terms.
        resolve_device(device, fix="use --device cpu, or leave --device out")
    with contextlib.ExitStack() as cleanup:
        tiny = False
        if spec.kind == "local":
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a command line prints results, not loading bars
            try:
                _load(reranker, device)
            except ConfigurationError as exc:
                if not fallback_to_tiny:
                    raise
                folder = cleanup.enter_context(
                    tempfile.TemporaryDirectory(prefix="milvus-rerank-tiny-")
                )
                reranker = _tiny_stand_in(provider, kwargs, Path(folder), str(exc), out)
                tiny = True
        with reranker:
            yield reranker, tiny


def _tiny_stand_in(
    provider: str, kwargs: dict[str, Any], folder: Path, reason: str, out: TextIO
) -> Reranker:
    """A loaded reranker of ``provider``'s family over a tiny random checkpoint in ``folder``.

    It is announced only once it loads: where it cannot either (a device that is not there),
    its error is the one the user sees, without notes about a stand-in that never ran.
    """
    from milvus_rerank.providers.local.reranker import LocalReranker

    cls = reranker_class(provider)
    if not issubclass(cls, LocalReranker):
        raise ConfigurationError(f"{provider!r} has no tiny stand-in")
    path = cls.build_tiny_checkpoint(folder / provider)
    reranker = _load(
        create_reranker(provider, **{**kwargs, "model_name": str(path)}), kwargs.get("device")
    )
    print(f"note: {reason.split('. ')[0]}.", file=out)
    print(
        "note: to use the real model, download it where the Hugging Face hub is reachable "
        "and pass --model PATH.",
        file=out,
    )
    print(
        f"note: continuing with a TINY RANDOMLY INITIALIZED {provider} model built in {path}: "
        "the pipeline is real, its scores are meaningless.",
        file=out,
    )
    return reranker


def _open_from_args(
    args: argparse.Namespace, *, fallback_to_tiny: bool = False, out: TextIO | None = None
) -> contextlib.AbstractContextManager[tuple[Reranker, bool]]:
    return open_reranker(
        args.reranker,
        model_name=args.model,
        base_url=args.base_url,
        api_key=_key_from_env(args.key_env),
        device=args.device,
        long_documents=args.long_documents,
        passage_overlap=args.passage_overlap,
        max_passages=args.max_passages,
        options={n: getattr(args, n) for n in MODEL_OPTIONS if getattr(args, n) is not None},
        fallback_to_tiny=fallback_to_tiny,
        out=out,
    )


def _key_from_env(name: str | None) -> str | None:
    """The key held by the environment variable ``--key-env`` names (never shown)."""
    if name is None:
        return None
    value = os.environ.get(name, "")
    if not value.strip():
        raise ConfigurationError(f"--key-env names {name}, which is not set or blank")
    return value


def _read_documents(name: str, text_field: str) -> tuple[list[Any], list[str]]:
    """The rows of a JSONL documents file (``-``: stdin) and the text of each."""
    from milvus_rerank.app.evaluate import read_jsonl

    source = "<stdin>" if name == "-" else name
    handle: contextlib.AbstractContextManager[TextIO]
    try:
        handle = contextlib.nullcontext(sys.stdin) if name == "-" else open(name, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the documents file {name!r}: {exc.strerror or exc}"
        ) from None
    try:
        with handle as lines:
            numbered = read_jsonl(lines, source)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{source} is not UTF-8 text ({exc.reason})") from None
    rows, texts = [], []
    for number, row in numbered:
        text = row.get(text_field) if isinstance(row, dict) else row
        if not isinstance(text, str):
            what = (
                f"has no string field {text_field!r} (--text-field)"
                if isinstance(row, dict)
                else "is neither a JSON object nor a string"
            )
            raise InvalidInputError(f"{source}:{number}: the document {what}")
        rows.append(row)
        texts.append(text)
    return rows, texts


def _cmd_rerank(args: argparse.Namespace) -> int:
    rows, texts = _read_documents(args.documents, args.text_field)
    query, texts, top_n = validate_request(args.query, texts, args.top_n)  # before the load
    with _open_from_args(args) as (reranker, _):
        results = reranker.rerank(query, texts, top_n=top_n)
    for result in results:
        row = rows[result.index]
        record = dict(row) if isinstance(row, dict) else {args.text_field: row}
        record.update({"index": result.index, "score": result.score})
        print(json.dumps(record, ensure_ascii=False))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from milvus_rerank.app.demo import run_demo

    with _open_from_args(args, fallback_to_tiny=True, out=sys.stdout) as (reranker, tiny):
        return run_demo(reranker, tiny=tiny, top_k=args.top_k, db=args.db)


def _cmd_serve(args: argparse.Namespace) -> int:
    from milvus_rerank.app.serve import check_api_key, run_server

    # The key is checked before the model loads: a bad one fails at once, in one line.
    if args.api_key is not None:
        api_key: str | None = check_api_key(args.api_key, "--api-key")
    else:
        from_env = os.environ.get("MILVUS_RERANK_API_KEY") or None  # empty: no key
        variable = "the environment variable MILVUS_RERANK_API_KEY"
        api_key = check_api_key(from_env, variable) if from_env is not None else None
    with _open_from_args(args) as (reranker, _):
        return run_server(
            reranker,
            host=args.host,
            port=args.port,
            max_wait_ms=args.max_wait_ms,
            model_name=args.served_model_name,
            api_key=api_key,
            insecure_no_auth=args.insecure_no_auth,
            allowed_hosts=args.allowed_hosts,
            header_timeout=args.header_timeout,
            max_connections=args.max_connections,
            max_body_bytes=args.max_body_bytes,
            max_documents=args.max_documents,
            max_document_chars=args.max_document_chars,
            max_batch_tokens=args.max_batch_tokens,
            max_pending_pairs=args.max_pending_pairs,
            max_concurrent_requests=args.max_concurrent_requests,
            body_timeout=args.body_timeout,
        )


def _cmd_eval(args: argparse.Namespace) -> int:
    from milvus_rerank.app.evaluate import load_beir, run_eval

    corpus, queries, qrels = load_beir(args.data, args.split)  # bad data fails before loading
    with _open_from_args(args, fallback_to_tiny=True, out=sys.stdout) as (reranker, tiny):
        return run_eval(
            reranker,
            corpus,
            queries,
            qrels,
            tiny=tiny,
            candidates=args.candidates,
            max_queries=args.max_queries,
        )


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
    """A batching wait in milliseconds: 0 to 1,000 (longer only stalls every request)."""
    return _number(text, lambda v: 0 <= v <= 1000, "must be between 0 and 1000 ms")


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


def _add_reranker_options(parser: argparse.ArgumentParser, default: str) -> None:
    from milvus_rerank.providers.local.options import DTYPES

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
    parser.add_argument(
        "--device",
        help=f"torch device for local rerankers ({_local_keys()}), e.g. cpu, cuda, cuda:1 "
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``--help`` still shows the full usage)."""

    def error(self, message: str) -> NoReturn:
        """Print ``milvus-rerank <command>: error: ...`` on one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return made

    demo = command("demo", "search Milvus Lite with BM25, then rerank the hits")
    _add_reranker_options(demo, "bge")
    demo.add_argument(
        "--db", help="Milvus Lite file to use (default: a temporary one, removed afterwards)"
    )
    demo.add_argument(
        "--top-k",
        type=_positive_int,
        default=5,
        help="hits to retrieve and rerank (default: %(default)s)",
    )
    demo.set_defaults(func=_cmd_demo)

    rerank = command("rerank", "rerank JSONL documents for a query")
    _add_reranker_options(rerank, "bge")
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
    rerank.set_defaults(func=_cmd_rerank)

    serve = command("serve", "serve a reranker over HTTP (Cohere, vLLM/Jina and TEI formats)")
    _add_reranker_options(serve, "bge")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port (default: %(default)s)")
    serve.add_argument(
        "--max-wait-ms",
        type=_wait_ms,
        default=2.0,
        help="how long a request may wait to share a batch (default: %(default)s)",
    )
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
    serve.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=10.0,
        help="seconds a connection may take to send its request headers, else it is "
        "closed (default: %(default)s)",
    )
    serve.add_argument(
        "--max-connections",
        type=_positive_int,
        default=1000,
        help="open connections at most, also bounded by the open-file limit; past it the "
        "longest wait for headers is closed, else 503 (default: %(default)s)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=2_000_000,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    serve.add_argument(
        "--body-timeout",
        type=_positive_float,
        default=30.0,
        help="seconds a request body may take to arrive, else 408 (default: %(default)s)",
    )
    serve.add_argument(
        "--max-documents",
        type=_positive_int,
        default=1000,
        help="more documents in one request get 422 (default: %(default)s)",
    )
    serve.add_argument(
        "--max-document-chars",
        type=_positive_int,
        help="characters of each text kept before tokenization (default: 32 per token of "
        "the model window, times --max-passages with --long-documents max_passage)",
    )
    serve.add_argument(
        "--max-batch-tokens",
        type=_positive_int,
        default=8192,
        help="tokens per model call (a local model's own count, else ~4 characters a "
        "token); large requests are cut into such micro-batches, interleaved with others "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--max-pending-pairs",
        type=_positive_int,
        default=16_384,
        help="pairs waiting to be scored before new requests get 429 (default: %(default)s)",
    )
    serve.add_argument(
        "--max-concurrent-requests",
        type=_positive_int,
        default=512,
        help="requests in flight before new ones get 429 (default: %(default)s)",
    )
    serve.set_defaults(func=_cmd_serve)

    evaluate = command("eval", "nDCG@10 and MRR@10 before/after reranking (BEIR format)")
    _add_reranker_options(evaluate, "bge")
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
    evaluate.set_defaults(func=_cmd_eval)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input or configuration)."""
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
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
