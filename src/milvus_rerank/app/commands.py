"""The ``milvus-rerank`` commands: each takes the parsed arguments and returns an exit status.

``open_reranker`` builds (and for a local model, loads) the reranker a command runs with,
through the registry; the commands hand it and plain options to ``run_demo``, ``run_server``
and ``run_eval``. Arguments are parsed in ``milvus_rerank.app.cli`` only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from milvus_rerank.app.serve.limits import flag_fields
from milvus_rerank.core.base import Reranker, validate_request
from milvus_rerank.core.errors import ConfigurationError, InvalidInputError
from milvus_rerank.core.registry import (
    PROVIDERS,
    create_reranker,
    provider_spec,
    providers_taking,
    reranker_class,
)

__all__ = [
    "MODEL_OPTIONS",
    "check_port",
    "cmd_demo",
    "cmd_eval",
    "cmd_rerank",
    "cmd_serve",
    "local_keys",
    "open_reranker",
]

#: Model options with a flag of their own (``--max-length`` sets ``max_length``): each goes to
#: the local rerankers whose class takes it, as its constructor says.
MODEL_OPTIONS = (
    *("instruction", "normalize", "max_length", "dtype", "split_special_tokens"),
    *("backend", "quantization", "onnx_file", "threads"),
)


def local_keys() -> str:
    """The local rerankers' provider keys, comma-separated."""
    return ", ".join(key for key, spec in PROVIDERS.items() if spec.kind == "local")


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
            who = ", ".join(takers) if takers else f"local rerankers ({local_keys()})"
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
                f"{name} {value!r} is for local rerankers ({local_keys()}); "
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
    onnx = (options or {}).get("backend") == "onnx"  # ONNX Runtime: the CPU, no torch
    if spec.kind == "local" and device is not None and not onnx:
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


def open_from_args(
    args: argparse.Namespace, *, fallback_to_tiny: bool = False, out: TextIO | None = None
) -> contextlib.AbstractContextManager[tuple[Reranker, bool]]:
    """``open_reranker`` with the reranker options the command line parsed."""
    return open_reranker(
        args.reranker,
        model_name=args.model,
        base_url=args.base_url,
        api_key=_key_from_env(args.key_env),
        device=args.device,
        long_documents=args.long_documents,
        passage_overlap=args.passage_overlap,
        max_passages=args.max_passages,
        options={n: _option(args, n) for n in MODEL_OPTIONS if _option(args, n) is not None},
        fallback_to_tiny=fallback_to_tiny,
        out=out,
    )


def _option(args: argparse.Namespace, name: str) -> Any:
    """A parsed model option (``--quantization none`` is no quantization: None)."""
    value = getattr(args, name)
    return None if name == "quantization" and value == "none" else value


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


def cmd_rerank(args: argparse.Namespace) -> int:
    """``rerank``: JSONL documents in, the ranked rows out (JSONL, with index and score)."""
    rows, texts = _read_documents(args.documents, args.text_field)
    query, texts, top_n = validate_request(args.query, texts, args.top_n)  # before the load
    with open_from_args(args) as (reranker, _):
        results = reranker.rerank(query, texts, top_n=top_n)
    for result in results:
        row = rows[result.index]
        record = dict(row) if isinstance(row, dict) else {args.text_field: row}
        record.update({"index": result.index, "score": result.score})
        print(json.dumps(record, ensure_ascii=False))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: Milvus Lite BM25 hits, then the same hits reranked."""
    from milvus_rerank.app.demo import run_demo

    with open_from_args(args, fallback_to_tiny=True, out=sys.stdout) as (reranker, tiny):
        return run_demo(reranker, tiny=tiny, top_k=args.top_k, db=args.db)


def _serve_key(given: str | None) -> str | None:
    """The server's key from ``--api-key``, else ``MILVUS_RERANK_API_KEY`` (empty: none)."""
    from milvus_rerank.app.serve import check_api_key

    if given is not None:
        return check_api_key(given, "--api-key")
    from_env = os.environ.get("MILVUS_RERANK_API_KEY") or None  # empty: no key
    variable = "the environment variable MILVUS_RERANK_API_KEY"
    return check_api_key(from_env, variable) if from_env is not None else None


def check_port(host: str, port: int) -> None:
    """Bind ``host``:``port`` and let it go: a busy port fails before the model loads.

    Raises:
        ConfigurationError: the port is in use, or the address is not this machine's.
    """
    from milvus_rerank.app.serve.listen import bind_sockets

    for sock in bind_sockets(host, port):
        sock.close()


def cmd_serve(args: argparse.Namespace) -> int:
    """``serve``: the reranker over HTTP until interrupted."""
    from milvus_rerank.app.serve import run_server
    from milvus_rerank.app.serve.server import check_exposure

    # The key, the host and the port are checked before the model loads (seconds for a
    # real one): a bad one fails at once, in one line. run_server binds the port again.
    api_key = _serve_key(args.api_key)
    check_exposure(args.host, api_key, args.insecure_no_auth)
    check_port(args.host, args.port)
    limits = {name: getattr(args, name) for name, _, _ in flag_fields()}
    with open_from_args(args) as (reranker, _):
        return run_server(
            reranker,
            host=args.host,
            port=args.port,
            model_name=args.served_model_name,
            api_key=api_key,
            insecure_no_auth=args.insecure_no_auth,
            allowed_hosts=args.allowed_hosts,
            **limits,
        )


def cmd_eval(args: argparse.Namespace) -> int:
    """``eval``: nDCG@10 and MRR@10 of a BEIR folder, before and after reranking."""
    from milvus_rerank.app.evaluate import load_beir, run_eval

    corpus, queries, qrels = load_beir(args.data, args.split)  # bad data fails before loading
    with open_from_args(args, fallback_to_tiny=True, out=sys.stdout) as (reranker, tiny):
        return run_eval(
            reranker,
            corpus,
            queries,
            qrels,
            tiny=tiny,
            candidates=args.candidates,
            max_queries=args.max_queries,
        )
