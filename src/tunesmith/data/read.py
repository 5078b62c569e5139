"""Find input files (files, folders, globs) and turn their records into document texts (a field or a template)."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError
from ..config import CleanConfig, DataConfig
from ..config.template import template_parts
from ..rundir.folder import split_glob
from .formats import SUFFIXES, DecodeStats, Oversized, Record, RowError, check_text_file, file_format, read_records, record_byte_limit
from .report import DataReport

_SUPPORTED = ", ".join(sorted(SUFFIXES - {s for s in SUFFIXES if s.endswith(".gz")})) + " (and .gz of the line formats)"


def _supported(path: Path) -> bool:
    return file_format(path) in {s for s in SUFFIXES if not s.endswith(".gz")} and (
        path.suffix.lower() != ".gz" or f"{file_format(path)}.gz" in SUFFIXES
    )


def expand_paths(patterns: list[str], key: str, confine_to: Path | None = None) -> list[Path]:
    """Files named directly, found in folders (recursively) or matched by globs, in a stable order.

    With `confine_to` (the web page's runs folder), a file that leads outside that folder by a symbolic link is
    refused: folder and glob expansion follow links, so checking the folder or the pattern alone is not enough.
    """
    files: list[Path] = []
    for pattern in patterns:
        path = Path(os.path.expanduser(pattern))
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _supported(p))
            if not found:
                raise UserError(f"{key}: folder {pattern} has no readable files; supported: {_SUPPORTED}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise UserError(f"{key}: {pattern} is not a regular file (a FIFO, a device or a socket); name a file of text")
        else:
            matched = _glob(path)
            if not matched:
                raise UserError(f"{key}: no file matches {pattern}; check the path")
            files.extend(matched)
    for file in files:
        if not _supported(file):
            raise UserError(f"{key}: {file} has an unsupported type; supported: {_SUPPORTED}")
        if confine_to is not None and confine_to.resolve() not in file.resolve().parents:
            raise UserError(f"{key}: {file} leads outside {confine_to} (a symbolic link); keep the data itself inside that folder")
    unique: dict[Path, Path] = {}
    for file in files:
        unique.setdefault(file.resolve(), file)  # a file reached by two names (a link, a folder and a glob) is read once
    return list(unique.values())


def _glob(pattern: Path) -> list[Path]:
    """The files a glob matches, as glob.glob matches them (hidden files only where the pattern names a dot). A `**`
    walks with pathlib, which does not descend into linked folders where glob.glob would: a link to a parent folder
    would make it match without end."""
    if "**" not in str(pattern):
        return sorted(Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file())
    parts = [part if part == "**" else part.replace("**", "*") for part in pattern.parts]  # `a**b` is `a*b`, as glob.glob reads it
    if parts[-1] == "**":
        parts.append("*")  # `notes/**`: every file below
    base, rest = split_glob(parts)
    dotted = any(part.startswith(".") for part in rest)
    return sorted(p for p in base.glob(str(Path(*rest)))
                  if p.is_file() and (dotted or not any(q.startswith(".") for q in p.relative_to(base).parts)))


def lookup(record: Any, dotted: str) -> Any:
    """The field named `dotted`: a key of that whole name (a column `price.usd`, or `text.1` that a repeated blank header
    is given), else a nested path (`meta.text` reads record["meta"]["text"]); None when there is neither."""
    if not isinstance(record, dict):
        return None
    if record.get(dotted) is not None:
        return record[dotted]
    for index, char in enumerate(dotted):
        if char == "." and dotted[:index] in record:
            found = lookup(record[dotted[:index]], dotted[index + 1:])
            if found is not None:
                return found
    return None


def as_text(value: Any) -> str:
    """A field's value as document text: a boolean, a list or a mapping as JSON writes it, not as Python's repr (`true`,
    `["a", "b"]`, not `True`, `['a', 'b']`); bytes as UTF-8; anything else (a number, a date, a decimal) as it prints."""
    if isinstance(value, (bool, list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def render(record: dict, parts: list[tuple[str, str | None]]) -> str | None:
    """A parsed template with each {field} replaced by the record's value; None when the record lacks one of them."""
    text = []
    for literal, name in parts:
        text.append(literal)
        if name is not None:
            value = lookup(record, name)
            if value is None:
                return None
            text.append(as_text(value))
    return "".join(text)


class DocumentReader:
    """Yields each record's text; counts skipped rows, missing fields and invalid UTF-8 into the report."""

    def __init__(self, text_field: str, template: str | None, per_file_text: bool, on_error: str, report: DataReport,
                 max_chars: int | None = None):
        self.max_bytes = record_byte_limit(max_chars)
        self.text_field = text_field
        self.template = template_parts(template) if template else None
        self.fields = list(dict.fromkeys(name for _, name in self.template if name)) if self.template else [text_field]
        self.per_file_text = per_file_text
        self.on_error = on_error
        self.report = report
        self.seen_fields: set[str] = set()
        self.structured_records = 0
        self.structured_hits = 0
        self.plain_texts = 0  # texts without fields (a .txt file's, a JSONL line that is a string): no template applies

    @classmethod
    def for_data(cls, data: DataConfig, clean: CleanConfig, report: DataReport, on_error: str | None = None) -> DocumentReader:
        return cls(data.text_field, data.template, data.txt_documents == "file", on_error or data.on_error, report, clean.max_chars)

    def _text(self, record: Record) -> str | None:
        if isinstance(record.value, str):
            self.plain_texts += 1
            return record.value
        self.structured_records += 1
        if len(self.seen_fields) < 50:
            self.seen_fields.update(record.value)
        text = render(record.value, self.template) if self.template else lookup(record.value, self.text_field)
        if text is None:
            return None
        self.structured_hits += 1
        return as_text(text)

    def records(self, files: list[Path]) -> Iterator[Record]:
        """Every well-formed record of every file; malformed rows stop the run or are counted (data.on_error)."""
        for path in files:
            check_text_file(path, whole=self.per_file_text)
            read_before = self.report.read
            if path.stat().st_size:
                yield from self._file_records(path)
            if self.report.read > read_before:
                self.report.files += 1
            else:  # no bytes, only blank lines, or a header with no rows under it
                self.report.empty_files.append(str(path))
                self.report.warnings.append(f"{path} holds no documents")

    def _file_records(self, path: Path) -> Iterator[Record]:
        stats = DecodeStats()
        for item in read_records(path, self.per_file_text, stats, self.max_bytes):
            self.report.read += 1
            if isinstance(item, Oversized):
                self.report.remove("too_long_chars", item.describe())
                continue
            if isinstance(item, RowError):
                if self.on_error == "fail":
                    raise UserError(f"{item}; fix the row or set data.on_error=skip")
                self.report.remove("malformed_row", str(item))
                continue
            yield item
        self.report.lines_with_bad_bytes += stats.lines_with_bad_bytes

    def text(self, record: Record) -> str | None:
        """The record's text by data.text_field or data.template; None (counted as a missing field) when absent."""
        text = self._text(record)
        if text is None:
            self.report.remove("missing_field", str(record.value)[:200])
        return text

    def check_fields_found(self) -> None:
        if self.template and self.plain_texts:
            self.report.warnings.append(f"data.template applies to records with fields; texts without fields (from .txt, .md "
                                        f"or .html files, or JSON lines that are plain strings) are read as they are: "
                                        f"{self.plain_texts:,} here")
        if self.structured_records and not self.structured_hits:
            wanted = ", ".join(self.fields)
            existing = ", ".join(sorted(self.seen_fields)) or "none"
            raise UserError(f"no record has the field {wanted} (fields found: {existing}); set data.text_field or data.template")

    def read(self, files: list[Path]) -> Iterator[str]:
        for record in self.records(files):
            text = self.text(record)
            if text is not None:
                yield text
        self.check_fields_found()
