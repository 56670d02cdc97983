"""``milvus_rerank.cli``: the old path of the command line (``milvus_rerank.app.cli``).

Kept for ``python -m milvus_rerank.cli`` and for console scripts installed before the move.
"""

import sys

from milvus_rerank.app.cli import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
