"""Row files in and out of `predict` and `generate`: read every row of a CSV, TSV, JSONL (or text) file, and
write rows back in the input's column order, atomically, never over an existing file."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

from ..data.formats import DecodeStats, RowError, check_text_file, file_format, read_records
from ..errors import UserError
from ..rundir.durable import write_atomically

TABLE_FORMATS = (".csv", ".tsv", ".jsonl")


def read_rows(path: Path, formats: tuple[str, ...], text_field: str = "prompt", log=None) -> list[dict]:
    """Every row as a dict; a text file's blank-line-separated passages become rows of one field, `text_field`."""
    return read_numbered_rows(path, formats, text_field, log)[0]


def read_numbered_rows(path: Path, formats: tuple[str, ...], text_field: str = "prompt",
                       log=None) -> tuple[list[dict], list[int]]:
    """The rows, and the line of the file where each begins (what an error about one row names). A CSV or TSV row of
    empty cells is a row, so the output lines up with the input; bytes that are not UTF-8 are read as replacement
    characters, and `log` is told how many lines had them."""
    if file_format(path) not in formats:
        raise UserError(f"--input {path}: this command reads {', '.join(formats)} files")
    if not path.is_file():
        raise UserError(f"--input {path}: " + ("a folder; name a file" if path.is_dir() else "not found"))
    check_text_file(path, "--input")
    rows, lines, stats = [], [], DecodeStats()
    for record in read_records(path, False, stats, empty_rows=True):
        if isinstance(record, RowError):
            raise UserError(f"{record}; fix the row and run again")
        value = record.value
        if isinstance(value, str):
            value = {text_field: value.rstrip("\r\n")}
        if not isinstance(value, dict):
            raise UserError(f"{path}: every line must be a JSON object")
        rows.append(value)
        lines.append(record.line)
    bad = stats.lines_with_bad_bytes
    if bad and log is not None:
        log(f"warning: --input {path}: {bad:,} {'line is' if bad == 1 else 'lines are'} not valid UTF-8, read with "
            "replacement characters; save the file as UTF-8 to keep those characters")
    return rows, lines


def check_output(path: Path, formats: tuple[str, ...] = TABLE_FORMATS) -> None:
    if file_format(path) not in formats:
        raise UserError(f"--output {path}: this command writes {', '.join(formats)} files")
    if path.exists() or path.is_symlink():
        raise UserError(f"--output {path} exists; name a new file (it is never overwritten)")
    folder = next((parent for parent in path.parents if parent.exists()), None)
    if folder is not None and not folder.is_dir():
        raise UserError(f"--output {path}: {folder} is a file, not a folder; name a file in a folder")


def write_rows(path: Path, rows: list[dict]) -> None:
    check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if file_format(path) == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, columns, delimiter="\t" if file_format(path) == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
        text = table.getvalue()
    # `out.csv.gz` is written gzipped, as the readers read such a name
    write_atomically(path, gzip.compress(text.encode("utf-8"), mtime=0) if path.suffix.lower() == ".gz" else text)
