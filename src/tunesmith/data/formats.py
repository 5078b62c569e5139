"""Readers for each input format. Each yields records (a string, or a dict of fields) with their line number.

Line formats stream; a JSON array and an HTML page are read whole, as their formats require.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import itertools
import json
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from ..errors import UserError

DELIMITED = {".csv", ".tsv"}
LINE_FORMATS = {".txt", ".md", ".jsonl", *DELIMITED}
WHOLE_FORMATS = {".json", ".parquet", ".html", ".htm"}
SUFFIXES = LINE_FORMATS | WHOLE_FORMATS | {f"{s}.gz" for s in LINE_FORMATS}
_SNIFF_BYTES = 8192
_SKIP_CHUNK = 1 << 20
# a record's raw bytes can hold a text of N characters only if they number at most 12 per character (a JSON
# surrogate pair escape, \\ud83d\\ude00, spells one character in 12 bytes), plus room for its other fields
BYTES_PER_CHAR, RECORD_SLACK_BYTES = 12, 1 << 16


def record_byte_limit(max_chars: int | None) -> int | None:
    """The most raw bytes a record may have before it is dropped unread as too long (None: no limit)."""
    return BYTES_PER_CHAR * max_chars + RECORD_SLACK_BYTES if max_chars else None


@dataclass(frozen=True)
class Record:
    source: str
    line: int
    value: dict | str


class RowError(Exception):
    """One malformed row; with data.on_error=skip it is counted instead of stopping prepare."""


@dataclass(frozen=True)
class Oversized:
    """A record past the byte limit, skipped while reading so that it is never held whole; dropped as too long."""

    source: str
    line: int
    size: int
    head: str

    def describe(self) -> str:
        return f"{self.source}:{self.line}: {self.size:,} bytes or more, past the limit that clean.max_chars sets; it starts: {self.head}"


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


def check_text_file(path: Path, key: str = "data.train", whole: bool = False) -> None:
    """Refuse a file the readers would misread, naming it and the fix: mostly binary (NUL bytes or many control bytes),
    UTF-16, or text or JSONL lines that end with a carriage return alone, unless the file is read `whole` as one
    document (split in lines, it would be one line; the CSV reader, which sees quotes, names such lines itself)."""
    if file_format(path) == ".parquet":
        return
    try:
        with _open_binary(path) as handle:
            head = handle.read(_SNIFF_BYTES)
    except (OSError, EOFError) as exc:
        fix = "compress it again, or give the file uncompressed" if path.suffix.lower() == ".gz" else "check the file and its permissions"
        raise UserError(f"{path}: cannot be read ({exc}); {fix}") from None
    if not head:
        return
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError(f"{path}: UTF-16 text (as Excel's \"Unicode Text\" saves it); save it as UTF-8 and give it again")
    controls = sum(1 for byte in head if byte < 9 or 13 < byte < 32)
    if b"\x00" in head or controls / len(head) > 0.1:
        raise UserError(f"{path}: looks like a binary file, not text; remove it from {key} or convert it")
    split_in_lines = file_format(path) in LINE_FORMATS - DELIMITED and not whole  # the csv reader sees quotes itself
    if split_in_lines and b"\n" not in head and b"\r" in head.rstrip(b"\r"):
        raise UserError(f"{path}: its lines end with a carriage return alone (as old Mac programs save text); save it with "
                        "Unix (\\n) or Windows (\\r\\n) line endings and give it again")


@contextmanager
def _damage_as_user_error(path: Path):
    """A cut-short or corrupt .gz raises several types deep in a read; each becomes one line naming the file."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise UserError(f"{path}: the compressed file is damaged or cut short ({exc}); compress the original again, "
                        "or name another file") from None


def _raw_lines(handle: IO[bytes], max_bytes: int | None) -> Iterator[bytes | tuple[int, bytes]]:
    """Lines as bytes; a line longer than `max_bytes` is read past in chunks and reported as (its size, its start)."""
    while True:
        raw = handle.readline(max_bytes + 1) if max_bytes else handle.readline()
        if not raw:
            return
        if max_bytes is None or len(raw) <= max_bytes or raw.endswith(b"\n"):
            yield raw
            continue
        size, head = len(raw), raw[:200]
        while not raw.endswith(b"\n"):
            raw = handle.readline(_SKIP_CHUNK)
            if not raw:
                break
            size += len(raw)
        yield size, head


def _decode(raw: bytes, stats: DecodeStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.lines_with_bad_bytes += 1
        return raw.decode("utf-8", errors="replace")


def _lines(path: Path, stats: DecodeStats, max_bytes: int | None = None) -> Iterator[str | Oversized]:
    """Decoded lines, and an `Oversized` for each line past `max_bytes`; invalid UTF-8 is replaced (and counted), and the
    byte-order mark that Excel and Notepad put before a file's first line is dropped (else it joins the first field's name)."""
    with _damage_as_user_error(path), _open_binary(path) as handle:
        for number, raw in enumerate(_raw_lines(handle, max_bytes), 1):
            if isinstance(raw, tuple):
                yield Oversized(str(path), number, raw[0], raw[1].decode("utf-8", errors="replace"))
            else:
                yield _decode(raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw, stats)


def _whole(path: Path, stats: DecodeStats, max_bytes: int | None) -> str | Oversized:
    """A file read as one text, or an `Oversized` once it passes `max_bytes` (the rest is not read)."""
    parts, size = [], 0
    for line in _lines(path, stats, max_bytes):
        size += line.size if isinstance(line, Oversized) else len(line)
        if isinstance(line, Oversized) or (max_bytes and size > max_bytes):
            return Oversized(str(path), 1, size, "".join(parts)[:200])
        parts.append(line)
    return "".join(parts)


def read_text(path: Path, per_file: bool, stats: DecodeStats, max_bytes: int | None = None) -> Iterator[Record | Oversized]:
    """Documents separated by blank lines, or the whole file as one document."""
    if per_file:
        text = _whole(path, stats, max_bytes)
        yield text if isinstance(text, Oversized) else Record(str(path), 1, text)
        return
    buffer: list[str] = []
    start, size = 1, 0
    for number, line in enumerate(_lines(path, stats, max_bytes), 1):
        if isinstance(line, str) and not line.strip():
            if size:
                yield _document(path, start, buffer, size, max_bytes)
                buffer, size = [], 0
            continue
        if not size:
            start = number
        size += line.size if isinstance(line, Oversized) else len(line)
        if isinstance(line, str) and not (max_bytes and size > max_bytes):  # past the limit the rest is counted, not kept
            buffer.append(line)
    if size:
        yield _document(path, start, buffer, size, max_bytes)


def _document(path: Path, start: int, buffer: list[str], size: int, max_bytes: int | None) -> Record | Oversized:
    if max_bytes and size > max_bytes:
        return Oversized(str(path), start, size, "".join(buffer)[:200])
    return Record(str(path), start, "".join(buffer))


def _json_value(text: str):
    """JSON, with NaN and Infinity (not JSON, but what Python's writer puts for a missing float) read as null, never as the
    text "nan"; nesting too deep to read is a ValueError like any other malformed JSON."""
    try:
        return json.loads(text, parse_constant=lambda _name: None)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None


def _json_problem(exc: ValueError) -> str:
    return exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)


def read_jsonl(path: Path, stats: DecodeStats, max_bytes: int | None = None) -> Iterator[Record | RowError | Oversized]:
    for number, line in enumerate(_lines(path, stats, max_bytes), 1):
        if isinstance(line, Oversized):
            yield line
            continue
        if not line.strip():
            continue
        try:
            value = _json_value(line)
        except ValueError as exc:
            yield RowError(f"{path}:{number}: not valid JSON ({_json_problem(exc)}); each line of a .jsonl file must be one JSON object")
            continue
        if not isinstance(value, (dict, str)):
            yield RowError(f"{path}:{number}: expected a JSON object or string, got {type(value).__name__}")
            continue
        yield Record(str(path), number, value)


def read_json(path: Path, stats: DecodeStats) -> Iterator[Record | RowError]:
    """An array of records: read whole, as the format requires (so no per-record byte limit applies)."""
    text = "".join(_lines(path, stats))
    try:
        value = _json_value(text)
    except ValueError as exc:
        where = f"{path}:{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(path)
        raise UserError(f"{where}: not valid JSON ({_json_problem(exc)}); a .json file must hold an array of objects") from None
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]} style wrappers
    if not isinstance(value, list):
        raise UserError(f"{path}: a .json file must hold an array of objects (use .jsonl for one object per line)")
    for index, item in enumerate(value):
        if isinstance(item, (dict, str)):
            yield Record(str(path), index + 1, item)
        else:
            yield RowError(f"{path}: item {index + 1} is a {type(item).__name__}, not an object")


def read_delimited(path: Path, delimiter: str, stats: DecodeStats, max_bytes: int | None = None,
                   empty_rows: bool = False) -> Iterator[Record | RowError | Oversized]:
    """Rows of a CSV/TSV file; a line or a (multi-line) field past `max_bytes` drops its row as oversized. A row of only
    empty or blank cells is skipped, or with `empty_rows` read as a row whose every field is empty, whatever its number
    of cells (a reader that writes one output row per input row keeps it); a blank line is never a row. In a CSV whose header
    has a space after its commas, the spaces after a comma are not part of the cell."""
    skipped: list[Oversized] = []

    def lines() -> Iterator[str]:
        for line in _lines(path, stats, max_bytes):
            if isinstance(line, Oversized):
                skipped.append(line)
                yield "\n"  # an empty row in its place, which the reader skips
            else:
                yield line

    csv.field_size_limit(max_bytes or 2**31 - 1)
    source, ahead = lines(), []
    for line in source:  # up to the header
        ahead.append(line)
        if line.strip():
            break
    spaced = delimiter == "," and bool(ahead) and _typed_by_hand(ahead[-1])
    reader = csv.reader(itertools.chain(ahead, source), delimiter=delimiter, strict=True, skipinitialspace=spaced)
    header: list[str] = []
    try:
        while not _has_cells(header):  # blank lines before the header are not the header
            header = next(reader)
    except StopIteration:
        if skipped:  # one line past the size limit and nothing else: lines that end in something the file does not use
            raise UserError(f"{path}:1: the header row is too long to read; check the file's line endings") from None
        return
    except csv.Error as exc:
        raise UserError(f"{path}:{reader.line_num}: cannot read the header row ({_csv_problem(str(exc), delimiter)})") from None
    if skipped:  # the header itself was past the size limit: a data row must not stand in for it
        raise UserError(f"{path}:{skipped[0].line}: the header row is too long to read; check the file's line endings")
    repeated = [name for name, count in Counter(header).items() if count > 1 and name.strip()]
    if repeated:
        raise UserError(f"{path}:{reader.line_num}: the header names {', '.join(map(repr, repeated))} more than once (only "
                        "the last such column would be read); give each column its own name")
    header = _named(header)
    while True:
        begins = reader.line_num + 1  # a quoted field may run over several lines: a row is named by its first
        try:
            row = next(reader)
        except StopIteration:
            yield from skipped
            return
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                yield Oversized(str(path), begins, max_bytes or 0, "")
            else:
                yield RowError(f"{path}:{begins}: malformed row ({_csv_problem(str(exc), delimiter)})")
            continue
        yield from skipped
        skipped.clear()
        if not _has_cells(row):  # a blank line, or a row with nothing in it
            if empty_rows and (len(row) > 1 or row == [""]):  # cells, even one quoted empty cell: not a blank line
                yield Record(str(path), begins, dict.fromkeys(header, ""))
            continue
        if len(row) != len(header):
            yield RowError(f"{path}:{begins}: {len(row)} fields where the header has {len(header)}; check quoting")
            continue
        yield Record(str(path), begins, dict(zip(header, row)))


def _typed_by_hand(header_line: str) -> bool:
    """A header with a space after each of its commas (`label, text`) marks a hand-typed CSV, whose `1, "a, b"` is two
    cells; a quoted name holding a comma and a space (`"name, full",text`) is not that."""
    try:
        cells = next(csv.reader([header_line]))
    except (csv.Error, StopIteration):
        return False
    return len(cells) > 1 and all(cell.startswith(" ") for cell in cells[1:])


def _named(header: list[str]) -> list[str]:
    """The header with each blank name made `Unnamed: N` by its position, as pandas names them, and `.1`, `.2`... added
    where that name is taken (a file pandas saved with its index, read and saved again, has `Unnamed: 0` already)."""
    names, taken = [], set(header)
    for index, name in enumerate(header):
        if not name.strip():
            name = base = f"Unnamed: {index}"
            copy = 0
            while name in taken:
                copy += 1
                name = f"{base}.{copy}"
            taken.add(name)
        names.append(name)
    return names


def _csv_problem(message: str, delimiter: str) -> str:
    """Python's csv message in the words of the file's author."""
    if "unexpected end of data" in message:
        return "a quote opened in it is never closed, so the rest of the file would be read as one field"
    if "new-line character seen in unquoted field" in message:
        return ("a carriage return alone outside quotes: the file's lines end with one (as old Mac programs save text), or "
                "a cell holds one; save the file with Unix (\\n) or Windows (\\r\\n) line endings")
    if "expected after" in message:
        kind = "TSV" if delimiter == "\t" else "CSV"
        return (f"text follows the quote that closes a quoted cell: in {kind} a cell that begins with a quote must end "
                "with one, its own quotes written twice (\"\"), and a quote left open on an earlier line ends here")
    return message


def _has_cells(row: list[str]) -> bool:
    return any(cell.strip() for cell in row)


def read_parquet(path: Path, stats: DecodeStats) -> Iterator[Record]:
    from .parquet import parquet_rows

    for number, row in enumerate(parquet_rows(path, stats), 1):
        yield Record(str(path), number, row)


def read_html(path: Path, stats: DecodeStats, max_bytes: int | None = None) -> Iterator[Record | Oversized]:
    from .html import html_to_text

    page = _whole(path, stats, max_bytes)
    yield page if isinstance(page, Oversized) else Record(str(path), 1, html_to_text(page))


def read_records(path: Path, per_file_text: bool, stats: DecodeStats, max_bytes: int | None = None,
                 empty_rows: bool = False) -> Iterator[Record | RowError | Oversized]:
    """Every record of one file; those past `max_bytes` come as `Oversized`, never read whole. `empty_rows`: a CSV or
    TSV row of empty cells is a record too."""
    fmt = file_format(path)
    if fmt in (".txt", ".md"):
        return read_text(path, per_file_text, stats, max_bytes)
    if fmt == ".jsonl":
        return read_jsonl(path, stats, max_bytes)
    if fmt == ".json":
        return read_json(path, stats)
    if fmt in (".csv", ".tsv"):
        return read_delimited(path, "\t" if fmt == ".tsv" else ",", stats, max_bytes, empty_rows)
    if fmt == ".parquet":
        return read_parquet(path, stats)
    return read_html(path, stats, max_bytes)
