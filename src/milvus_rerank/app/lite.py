"""Milvus Lite for the demo and ``eval``: a throw-away client, a BM25 collection, BM25 search.

One place for what both commands need from an embedded Milvus, so they cannot drift apart.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from milvus_rerank.core.errors import MissingDependencyError

__all__ = ["build_bm25_collection", "lite_client", "search_bm25"]


@contextmanager
def lite_client(feature: str, db: str | Path | None = None) -> Iterator[tuple[Any, Path]]:
    """A Milvus Lite ``MilvusClient`` and its database file, closed (and cleaned up) on exit.

    Without ``db`` the database lives in a temporary folder that is always removed, so no run
    leaves files behind. ``feature`` names the caller in the missing-``pymilvus`` error.

    Raises:
        MissingDependencyError: pymilvus (the ``milvus`` extra) is not installed.
    """
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise MissingDependencyError(feature, "milvus", "pymilvus") from exc
    # Milvus Lite's embedded gRPC server logs an unimplemented internal call as an ERROR.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    # A cleanup error (a file Milvus Lite still holds) must not turn a finished run into a failure.
    with tempfile.TemporaryDirectory(
        prefix="milvus-rerank-lite-", ignore_cleanup_errors=True
    ) as folder:
        path = Path(db) if db is not None else Path(folder) / "milvus.db"
        client = MilvusClient(str(path))
        try:
            yield client, path
        finally:
            client.close()
            if db is None:
                _stop_server(path)
                shutil.rmtree(folder, ignore_errors=True)


def _stop_server(path: Path) -> None:
    """Stop the embedded server behind ``path``: ``close()`` leaves it running, still writing."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:  # pragma: no cover - a pymilvus without Milvus Lite never gets here
        return
    server_manager_instance.release_server(str(path))


def build_bm25_collection(client: Any, rows: list[dict[str, Any]], name: str) -> None:
    """(Re)create ``name`` with Milvus's built-in BM25 full-text search over ``text``; load it."""
    from pymilvus import DataType, Function, FunctionType

    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=8192, enable_analyzer=True)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(
            name="bm25",
            function_type=FunctionType.BM25,
            input_field_names=["text"],
            output_field_names=["sparse"],
        )
    )
    index = client.prepare_index_params()
    index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(name, schema=schema, index_params=index)
    client.insert(name, rows)
    client.load_collection(name)


def search_bm25(client: Any, name: str, query: str, limit: int) -> list[list[dict[str, Any]]]:
    """BM25 full-text search of a ``build_bm25_collection`` collection, with the text field."""
    hits: list[list[dict[str, Any]]] = client.search(
        name,
        data=[query],
        anns_field="sparse",
        limit=limit,
        output_fields=["text"],
        search_params={"metric_type": "BM25"},
    )
    return hits
