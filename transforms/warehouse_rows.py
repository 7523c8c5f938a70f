"""What a warehouse's commit takes for each table: its rows as dicts, as an Arrow table of the contract's columns (and
RETRACTED), or as an iterator of such chunks (no primary key in two of them), so a backfill's tables can pass a chunk
at a time instead of whole."""
from __future__ import annotations

from typing import Iterator


def chunks_of(rows) -> Iterator:
    """A table's rows for one commit as the chunks they come in: a list of dicts or an Arrow table is one chunk.
    (Arrow is recognised by its method, so the BigQuery writer need not import pyarrow.)"""
    if isinstance(rows, list) or hasattr(rows, "to_pylist"):
        return iter([rows])
    return iter(rows)

