"""Parquet input: each row a record of its columns, read in batches; a damaged file and text that is not UTF-8 are named
as the line formats name them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..errors import UserError, first_line


def parquet_rows(path: Path, stats) -> Iterator[dict]:
    """Each row as a dict of its columns; `stats` (the readers' DecodeStats) counts the rows holding bytes that are
    not UTF-8."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def damaged(exc: Exception) -> UserError:
        return UserError(f"{path}: not a readable Parquet file, damaged or cut short ({first_line(exc, 200)}); "
                         "write or copy it again")

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise damaged(exc) from None
    batches = parquet.iter_batches(batch_size=2048)
    while True:
        try:
            batch = next(batches, None)
            rows = None if batch is None else _parquet_rows(batch, stats, path)
        except (pa.ArrowException, OSError) as exc:  # a data page damaged past the footer
            raise damaged(exc) from None
        if rows is None:
            return
        yield from rows


def _parquet_rows(batch, stats, path: Path) -> list[dict]:
    """A batch's rows; a string column holding bytes that are not UTF-8 (a careless writer's Latin-1, as plain or
    dictionary-encoded strings) is read as the text readers read such bytes, with replacement characters, and each row
    holding some is counted. Such bytes inside a list or a mapping are refused."""
    import pyarrow as pa

    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        pass
    columns = {name: column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
               for name, column in zip(batch.schema.names, batch.columns)}
    texts = [name for name, column in columns.items() if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)]
    try:
        rows = pa.RecordBatch.from_pydict({name: column.cast(pa.binary()) if name in texts else column
                                           for name, column in columns.items()}).to_pylist()
    except UnicodeDecodeError:
        raise UserError(f"{path}: a list or a mapping in it holds text that is not UTF-8; write the file with UTF-8 "
                        "text") from None
    for row in rows:
        decoded = {name: row[name].decode("utf-8", errors="replace") for name in texts if row[name] is not None}
        stats.lines_with_bad_bytes += any("\ufffd" in text for text in decoded.values())
        row.update(decoded)
    return rows
