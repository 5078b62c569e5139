"""What a task hands to `prepare`: its units (documents, conversations, labelled rows) and how each becomes tokens.

`data` defines this interface and plain text's own kind; the tasks (`tasks/`) implement it for theirs,
so the one preparer never needs to know which task it serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from ..config import CleanConfig, DataConfig
from ..errors import UserError
from .pipeline import TokenWriter, boilerplate_set, count_lines, encode_batch, transformed, without_boilerplate
from .read import DocumentReader
from .report import DataReport

# boilerplate lines are found in the first documents: a line common enough to be boilerplate shows up
# there, and the first pass stays cheap and its memory bounded however large the corpus
BOILERPLATE_SAMPLE = 10_000

Reader = Callable[[DataReport], DocumentReader]  # a fresh reader that counts into the given report
FIELDS_HINT = "check data.text_field/template or switch that clean.* step off"


@dataclass
class Unit:
    """One whole thing the split keeps on one side: `key` is what de-duplication compares, `value` the task's payload."""

    key: str
    value: Any


@dataclass
class Encoded:
    """A unit's pieces as the writer stores them, with all its tokens for the MinHash signature."""

    unit: Unit
    ids: np.ndarray
    pieces: list[tuple]  # (ids,) for packed text; (ids, loss mask, class) for examples
    lengths: list[int]  # each piece's length, for the report's histogram
    digest: bytes = b""
    signature: np.ndarray | None = None


class UnitKind(Protocol):
    """The task's side of preparation; `tasks` implements it, `data.preparer` drives it."""

    layout: str  # "packed" (one token stream, cut into blocks) or "examples" (kept whole, with a loss mask)
    unit_words: str  # what the report calls the units
    fields_hint: str  # what to check when every record was dropped

    def cache_settings(self) -> dict: ...

    def begin(self, reader: Reader, files: list[Path]) -> None:
        """A first look at the training files before the stream (the label set, for classification)."""

    def units(self, reader: Reader, files: list[Path], data: DataConfig, clean: CleanConfig, report: DataReport) -> Iterator[Unit]: ...

    def encode(self, units: list[Unit], tokenizer, data: DataConfig, clean: CleanConfig, report: DataReport) -> list[Encoded]: ...

    def finish(self, train, val, data: DataConfig, report: DataReport, eval_only: bool) -> dict:
        """Checks and counts once the splits are written: the task part of meta.json."""


class TextUnits:
    """Plain text: documents cleaned, boilerplate lines dropped, tokenized with EOS after each, packed into blocks."""

    layout = "packed"
    unit_words = "documents"
    fields_hint = FIELDS_HINT

    def cache_settings(self) -> dict:
        return {}

    def begin(self, reader: Reader, files: list[Path]) -> None:
        pass

    def units(self, reader: Reader, files: list[Path], data: DataConfig, clean: CleanConfig, report: DataReport) -> Iterator[Unit]:
        texts: Iterable[str] = transformed(reader(report).read(files), clean, report)
        if clean.boilerplate:
            counts, documents = count_lines(islice(reader(DataReport()).read(files), BOILERPLATE_SAMPLE))
            texts = without_boilerplate(texts, boilerplate_set(counts, documents, clean), counts, report)
        return (Unit(text, text) for text in texts)

    def encode(self, units: list[Unit], tokenizer, data: DataConfig, clean: CleanConfig, report: DataReport) -> list[Encoded]:
        encoded = []
        for unit, ids in zip(units, encode_batch(tokenizer, [unit.value for unit in units])):
            if len(ids) < clean.min_tokens:
                report.remove("too_short_tokens", unit.key)
            elif clean.max_tokens and len(ids) > clean.max_tokens:
                report.remove("too_long_tokens", unit.key)
            else:
                ids.append(tokenizer.eos_token_id)
                array = np.array(ids, dtype=np.int64)
                encoded.append(Encoded(unit, array[:-1], [(array,)], [len(ids) - 1]))
        return encoded

    def finish(self, train: TokenWriter, val: TokenWriter, data: DataConfig, report: DataReport, eval_only: bool) -> dict:
        block_size = data.block_size
        if val.tokens < 2:
            if eval_only:
                raise UserError(f"the data has {val.tokens} tokens after cleaning; at least 2 are needed to measure perplexity")
            raise UserError(f"the validation split has {val.tokens} tokens (one document left after cleaning?); "
                            "add documents or pass a validation file with --val-data")
        if not eval_only and train.tokens < block_size:
            lower = f" or lower data.block_size to at most {train.tokens}" if train.tokens >= 8 else ""  # 8 is its least
            raise UserError(f"the training split has {train.tokens} tokens, fewer than one block of {block_size}; "
                            f"add more text{lower}")
        return {}

