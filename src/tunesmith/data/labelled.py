"""Labelled rows for classification: a text and a label from each record of a table or JSON lines file."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..config import CleanConfig, DataConfig
from ..errors import UserError
from .conversations import skip_row
from .pipeline import clean_one
from .read import DocumentReader, lookup
from .report import DataReport
from .units import Unit


def label_key(value) -> str:
    """Labels compare as text: 1, "1" and 1.0 from different files are the same class."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def sorted_labels(labels) -> list[str]:
    """Numeric labels in numeric order, others alphabetically."""
    def order(label: str):
        try:
            return (0, float(label), label)
        except ValueError:
            return (1, 0.0, label)
    return sorted(set(labels), key=order)


NESTED = "\0nested"  # `_label`'s answer for a label that is a list or a mapping: a malformed row, never a class


def _label(record, data: DataConfig) -> str | None:
    if isinstance(record.value, str):
        raise UserError(f"{record.source}: classification needs a table or JSON lines with a text and a label "
                        f"(data.text_field, data.label_field); plain text has no labels")
    label = lookup(record.value, data.label_field)
    if isinstance(label, (list, dict)):
        return NESTED
    return None if label is None or str(label).strip() == "" else label_key(label)


def label_set(reader: DocumentReader, files: list[Path], data: DataConfig) -> list[str]:
    """Every label in the files, in sorted order: a first pass that reads the label column only."""
    return sorted_labels(label for record in reader.records(files) if (label := _label(record, data)) not in (None, NESTED))


def labelled_units(reader: DocumentReader, files: list[Path], data: DataConfig, clean: CleanConfig, report: DataReport,
                   steps: list, known: set[str]) -> Iterator[Unit]:
    """(text, label) units, cleaned and length-filtered; rows whose label is not in `known` are counted and dropped."""
    for record in reader.records(files):
        label = _label(record, data)
        text = reader.text(record)
        if text is None:
            continue
        if label is None:
            report.remove("missing_field", str(record.value)[:200])
            continue
        if label == NESTED:
            skip_row(UserError(f"{record.source}:{record.line}: the label in '{data.label_field}' is a list or a mapping, "
                               "not text or a number"), reader.on_error, report)
            continue
        text = clean_one(text, steps, report)
        if not text:
            report.remove("empty", str(record.value)[:200])
        elif len(text) < clean.min_chars:
            report.remove("too_short_chars", text)
        elif clean.max_chars and len(text) > clean.max_chars:
            report.remove("too_long_chars", text)
        elif label not in known:
            report.remove("unknown_label", f"{label}: {text}")
        else:
            yield Unit(text, (text, label))
    reader.check_fields_found()
