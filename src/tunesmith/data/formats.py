"""Readers for each input format. Each yields records (a string, or a dict of fields) with their line number.

Line formats stream; a JSON array and an HTML page are read whole, as their formats require.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from ..errors import UserError

LINE_FORMATS = {".txt", ".md", ".jsonl", ".csv", ".tsv"}
WHOLE_FORMATS = {".json", ".parquet", ".html", ".htm"}
SUFFIXES = LINE_FORMATS | WHOLE_FORMATS | {f"{s}.gz" for s in LINE_FORMATS}
_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Record:
    source: str
    line: int
    value: dict | str


class RowError(Exception):
    """One malformed row; with data.on_error=skip it is counted instead of stopping prepare."""


@dataclass
class DecodeStats:
    """Counts of text that was not valid UTF-8 and was decoded with replacement characters."""

    lines_with_bad_bytes: int = 0


def file_format(path: Path) -> str:
    """The format suffix, with .gz stripped: `notes.jsonl.gz` -> `.jsonl`."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] == ".gz":
        return suffixes[0] if len(suffixes) == 2 else ""
    return suffixes[-1] if suffixes else ""


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def check_not_binary(path: Path) -> None:
    """Refuse a file that is mostly binary (NUL bytes or many control bytes), naming it."""
    if file_format(path) == ".parquet":
        return
    try:
        with _open_binary(path) as handle:
            head = handle.read(_SNIFF_BYTES)
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None
    if not head:
        return
    controls = sum(1 for byte in head if byte < 9 or 13 < byte < 32)
    if b"\x00" in head or controls / len(head) > 0.1:
        raise UserError(f"{path}: looks like a binary file, not text; remove it from data.train or convert it")


def _lines(path: Path, stats: DecodeStats) -> Iterator[str]:
    """Decoded lines; invalid UTF-8 is replaced (and counted) rather than fatal."""
    with _open_binary(path) as handle:
        for raw in handle:
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.lines_with_bad_bytes += 1
                yield raw.decode("utf-8", errors="replace")


def read_text(path: Path, per_file: bool, stats: DecodeStats) -> Iterator[Record]:
    """Documents separated by blank lines, or the whole file as one document."""
    if per_file:
        yield Record(str(path), 1, "".join(_lines(path, stats)))
        return
    buffer: list[str] = []
    start = 1
    for number, line in enumerate(_lines(path, stats), 1):
        if line.strip():
            if not buffer:
                start = number
            buffer.append(line)
        elif buffer:
            yield Record(str(path), start, "".join(buffer))
            buffer = []
    if buffer:
        yield Record(str(path), start, "".join(buffer))


def read_jsonl(path: Path, stats: DecodeStats) -> Iterator[Record | RowError]:
    for number, line in enumerate(_lines(path, stats), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RowError(f"{path}:{number}: not valid JSON ({exc.msg}); each line of a .jsonl file must be one JSON object")
            continue
        if not isinstance(value, (dict, str)):
            yield RowError(f"{path}:{number}: expected a JSON object or string, got {type(value).__name__}")
            continue
        yield Record(str(path), number, value)


def read_json(path: Path, stats: DecodeStats) -> Iterator[Record | RowError]:
    text = "".join(_lines(path, stats))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); a .json file must hold an array of objects") from None
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]} style wrappers
    if not isinstance(value, list):
        raise UserError(f"{path}: a .json file must hold an array of objects (use .jsonl for one object per line)")
    for index, item in enumerate(value):
        if isinstance(item, (dict, str)):
            yield Record(str(path), index + 1, item)
        else:
            yield RowError(f"{path}: item {index + 1} is a {type(item).__name__}, not an object")


def read_delimited(path: Path, delimiter: str, stats: DecodeStats) -> Iterator[Record | RowError]:
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(_lines(path, stats), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise UserError(f"{path}:1: cannot read the header row ({exc})") from None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield RowError(f"{path}:{reader.line_num}: malformed row ({exc})")
            continue
        if not row:
            continue
        if len(row) != len(header):
            yield RowError(f"{path}:{reader.line_num}: {len(row)} fields where the header has {len(header)}; check quoting")
            continue
        yield Record(str(path), reader.line_num, dict(zip(header, row)))


def read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=2048):
        for row in batch.to_pylist():
            number += 1
            yield Record(str(path), number, row)


def read_html(path: Path, stats: DecodeStats) -> Iterator[Record]:
    from .html import html_to_text

    yield Record(str(path), 1, html_to_text("".join(_lines(path, stats))))


def read_records(path: Path, per_file_text: bool, stats: DecodeStats) -> Iterator[Record | RowError]:
    fmt = file_format(path)
    if fmt in (".txt", ".md"):
        return read_text(path, per_file_text, stats)
    if fmt == ".jsonl":
        return read_jsonl(path, stats)
    if fmt == ".json":
        return read_json(path, stats)
    if fmt in (".csv", ".tsv"):
        return read_delimited(path, "\t" if fmt == ".tsv" else ",", stats)
    if fmt == ".parquet":
        return read_parquet(path)
    return read_html(path, stats)
