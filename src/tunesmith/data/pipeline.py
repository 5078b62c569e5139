"""The streaming document pipeline of `prepare`: clean, drop boilerplate, de-duplicate, tokenize, split, write.

Documents flow through generators and their tokens go straight to disk, so memory holds only the
de-duplication index (16 bytes per document, plus a MinHash signature) and the boilerplate line counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..config import CleanConfig
from .clean import line_digest, text_digest, transforms
from .dedup import NearDuplicateIndex
from .report import DataReport
from .split import hash_bucket

BATCH_DOCUMENTS = 1024


def transformed(texts: Iterable[str], cfg: CleanConfig, report: DataReport) -> Iterator[str]:
    """Apply the text transforms and the character-length filters."""
    steps = transforms(cfg)
    for text in texts:
        if cfg.max_chars and len(text) > 2 * cfg.max_chars:  # far too long: drop before paying for the transforms
            report.remove("too_long_chars", text)
            continue
        for name, transform in steps:
            new = transform(text)
            if new != text and name != "strip":
                report.change(name)
            text = new
        if not text:
            report.remove("empty", text)
        elif len(text) < cfg.min_chars:
            report.remove("too_short_chars", text)
        elif cfg.max_chars and len(text) > cfg.max_chars:
            report.remove("too_long_chars", text)
        else:
            yield text


def count_lines(texts: Iterable[str]) -> tuple[Counter, int]:
    """How many documents contain each distinct non-blank line (by 8-byte hash)."""
    counts: Counter = Counter()
    documents = 0
    for text in texts:
        documents += 1
        counts.update({line_digest(line) for line in text.split("\n") if line.strip()})
    return counts, documents


def boilerplate_set(counts: Counter, documents: int, cfg: CleanConfig) -> set[int]:
    floor = max(cfg.boilerplate_min_docs, cfg.boilerplate_min_fraction * documents)
    return {digest for digest, n in counts.items() if n >= floor}


def without_boilerplate(texts: Iterable[str], boilerplate: set[int], counts: Counter, report: DataReport) -> Iterator[str]:
    examples: dict[int, str] = {}
    removed_lines = 0
    for text in texts:
        kept_lines = []
        for line in text.split("\n"):
            digest = line_digest(line) if line.strip() else None
            if digest is not None and digest in boilerplate:
                removed_lines += 1
                if len(examples) < 20 and digest not in examples:
                    examples[digest] = line
                continue
            kept_lines.append(line)
        if len(kept_lines) != len(text.split("\n")):
            report.change("boilerplate_lines")
        cleaned = "\n".join(kept_lines).strip()
        if not cleaned:
            report.remove("only_boilerplate", text)
            continue
        yield cleaned
    report.boilerplate_lines = sorted(
        ({"line": line, "documents": counts[digest]} for digest, line in examples.items()), key=lambda row: -row["documents"]
    )[:10]


def exact_unique(texts: Iterable[str], seen: set[bytes], report: DataReport) -> Iterator[tuple[str, bytes]]:
    for text in texts:
        digest = text_digest(text)
        if digest in seen:
            report.remove("exact_duplicate", text)
            continue
        seen.add(digest)
        yield text, digest


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class TokenWriter:
    """Appends documents' ids (each followed by EOS) to one split's binary token file."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path = path
        self.dtype = dtype
        self.handle = path.open("wb")
        self.tokens = 0
        self.documents = 0
        self.last_document: np.ndarray | None = None

    def write(self, ids: np.ndarray) -> None:
        ids.astype(self.dtype, copy=False).tofile(self.handle)
        self.tokens += len(ids)
        self.documents += 1
        self.last_document = ids

    def take_last(self) -> np.ndarray:
        """Remove the last document written (to move it to the other split); returns its ids."""
        ids = self.last_document
        self.handle.flush()
        self.handle.truncate(self.handle.tell() - len(ids) * self.dtype.itemsize)
        self.handle.seek(0, 2)
        self.tokens -= len(ids)
        self.documents -= 1
        self.last_document = None
        return ids

    def close(self) -> None:
        self.handle.close()


@dataclass
class Tokenized:
    text: str
    digest: bytes
    ids: np.ndarray  # with the trailing EOS


def tokenized(docs: Iterable[tuple[str, bytes]], tokenizer, cfg: CleanConfig, report: DataReport) -> Iterator[Tokenized]:
    """Batch tokenization (the fast tokenizer encodes a batch on all cores), then the token-length filters."""
    eos = tokenizer.eos_token_id
    for batch in batched(docs, BATCH_DOCUMENTS):
        encoded = tokenizer([text for text, _ in batch], add_special_tokens=False)["input_ids"]
        lengths = []
        for (text, digest), ids in zip(batch, encoded):
            if len(ids) < cfg.min_tokens:
                report.remove("too_short_tokens", text)
            elif cfg.max_tokens and len(ids) > cfg.max_tokens:
                report.remove("too_long_tokens", text)
            else:
                lengths.append(len(ids))
                yield Tokenized(text, digest, np.array(ids + [eos], dtype=np.int64))
        report.token_lengths.append(np.array(lengths, dtype=np.int32))


class Splitter:
    """Train or validation by a stable hash of the text, except that a near-duplicate follows its cluster.

    The first document of each near-duplicate cluster decides the side, so no near-copy of a
    validation document is ever trained on, even with near-duplicate removal switched off.
    """

    def __init__(self, val_fraction: float, near: NearDuplicateIndex, drop_near: bool, report: DataReport):
        self.val_fraction = val_fraction
        self.near = near
        self.drop_near = drop_near
        self.report = report
        self.side_of: dict[int, bool] = {}
        self.next_key = 0
        self.moved = 0

    def assign(self, doc: Tokenized) -> bool | None:
        """True for validation, False for train, None when dropped as a near duplicate."""
        minhash = self.near.signature(doc.ids[:-1])
        match = self.near.match(minhash)
        if match is not None and self.drop_near:
            self.report.remove("near_duplicate", doc.text)
            return None
        own_side = hash_bucket(doc.digest) < self.val_fraction
        side = own_side if match is None else self.side_of[match]
        self.moved += side != own_side
        key = self.next_key
        self.next_key += 1
        self.side_of[key] = side
        self.near.add(key, minhash)
        return side


def write_splits(docs: Iterable[Tokenized], splitter: Splitter, train: TokenWriter, val: TokenWriter, on_val: Callable[[Tokenized], None] | None = None) -> None:
    for doc in docs:
        side = splitter.assign(doc)
        if side is None:
            continue
        (val if side else train).write(doc.ids)
        if side and on_val:
            on_val(doc)
