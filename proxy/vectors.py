"""pgvector's Python value classes, from whichever pgvector release the user has installed.

pgvector 0.4 moved them to the package root; 0.3.x (which langchain-postgres pins) keeps them in
pgvector.utils. Same classes, same from_text/from_binary/to_numpy, so the proxy runs beside either.
"""

from __future__ import annotations

try:
    from pgvector import HalfVector, SparseVector, Vector
except ImportError:  # pgvector < 0.4
    from pgvector.utils import HalfVector, SparseVector, Vector  # type: ignore[no-redef]

__all__ = ["HalfVector", "SparseVector", "Vector"]
