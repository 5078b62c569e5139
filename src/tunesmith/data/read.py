"""Read documents from text, Markdown, JSONL and CSV files, given as files, folders or globs."""

from __future__ import annotations

import csv
import glob
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import UserError

TEXT_SUFFIXES = {".txt", ".md"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".csv"}
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"
    txt_documents: str = "blank_line"  # or "file"


def expand_paths(patterns: list[str], key: str) -> list[Path]:
    """Files named directly, found in folders (recursively) or matched by globs, in a stable order."""
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise UserError(f"{key}: folder {pattern} has no {'/'.join(sorted(SUFFIXES))} files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            matched = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matched:
                raise UserError(f"{key}: no file matches {pattern}; check the path")
            files.extend(matched)
    for file in files:
        if file.suffix.lower() not in SUFFIXES:
            raise UserError(f"{key}: {file} has an unsupported type; use {', '.join(sorted(SUFFIXES))}")
    return list(dict.fromkeys(files))


def _read_text_file(path: Path, options: ReadOptions) -> Iterator[str]:
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    if options.txt_documents == "file":
        yield text
    else:
        yield from _BLANK_LINE.split(text)


def _read_jsonl(path: Path, options: ReadOptions) -> Iterator[str | None]:
    field = options.text_field
    seen_field = False
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{number}: not valid JSON; each line of a .jsonl file must be one JSON object") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: expected a JSON object with a '{field}' field")
            value = record.get(field)
            if value is None:
                if number > 50 and not seen_field:
                    break
                yield None
                continue
            seen_field = True
            yield str(value)
    if not seen_field:
        raise UserError(f"{path}: no record has the field '{field}'; set data.text_field to the field that holds the text")


def _read_csv(path: Path, options: ReadOptions) -> Iterator[str | None]:
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if options.text_field not in columns:
            raise UserError(
                f"{path}: no column '{options.text_field}' (columns: {', '.join(columns) or 'none'}); set data.text_field"
            )
        for row in reader:
            yield row.get(options.text_field)


def read_documents(files: list[Path], options: ReadOptions) -> Iterator[str | None]:
    """Yield each document's raw text, or None for a record that lacks the text field."""
    for path in files:
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            yield from _read_text_file(path, options)
        elif suffix == ".jsonl":
            yield from _read_jsonl(path, options)
        else:
            yield from _read_csv(path, options)
