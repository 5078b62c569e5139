"""The streaming steps of `prepare`: clean, drop boilerplate, tokenize, split, write.

Documents flow through generators and their tokens go straight to disk, so memory holds only the
de-duplication index (16 bytes per document, plus a MinHash signature) and the boilerplate line counts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..config import CleanConfig
from .clean import transforms
from .dedup import NearDuplicateIndex
from .report import DataReport
from .split import hash_bucket
from .tokens import write_array

BATCH_DOCUMENTS = 1024


def transformed(texts: Iterable[str], cfg: CleanConfig, report: DataReport) -> Iterator[str]:
    """Apply the text transforms and the character-length filters."""
    steps = transforms(cfg)
    for text in texts:
        if cfg.max_chars and len(text) > 2 * cfg.max_chars:  # far too long: drop before paying for the transforms
            report.remove("too_long_chars", text)
            continue
        text = clean_one(text, steps, report)
        if not text:
            report.remove("empty", text)
        elif len(text) < cfg.min_chars:
            report.remove("too_short_chars", text)
        elif cfg.max_chars and len(text) > cfg.max_chars:
            report.remove("too_long_chars", text)
        else:
            yield text


def clean_one(text: str, steps: list, report: DataReport) -> str:
    """One text through the transforms, counting the documents each transform changed."""
    for name, transform in steps:
        new = transform(text)
        if new != text and name != "strip":
            report.change(name)
        text = new
    return text


def _line_key(line: str) -> int | None:
    """Lines compare with their whitespace folded, so raw and cleaned text give the same key.

    Python's own string hash: fast, and stable within the one process that runs both passes.
    """
    folded = " ".join(line.split())
    return hash(folded) if folded else None


def count_lines(texts: Iterable[str]) -> tuple[Counter, int]:
    """How many documents contain each distinct non-blank line (by 8-byte hash).

    Runs over the raw texts, a cheap first pass: the full transforms run once, in the second pass.
    """
    counts: Counter = Counter()
    documents = 0
    for text in texts:
        documents += 1
        counts.update({key for key in map(_line_key, text.split("\n")) if key is not None})
    counts.pop(None, None)
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
            digest = _line_key(line)
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
    """Appends documents' ids (each followed by EOS) to one split's binary token file, in large writes."""

    FLUSH_TOKENS = 1 << 20

    def __init__(self, directory: Path, split: str, dtype: np.dtype):
        self.path = directory / f"{split}.bin"
        self.dtype = dtype
        self.handle = self.path.open("wb")
        self.tokens = 0
        self.written = 0  # documents written
        self.buffer: list[np.ndarray] = []
        self.buffered = 0

    def write(self, ids: np.ndarray) -> None:
        self.buffer.append(ids)
        self.buffered += len(ids)
        self.tokens += len(ids)
        self.written += 1
        if self.buffered >= self.FLUSH_TOKENS:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            write_array(self.handle, np.concatenate(self.buffer).astype(self.dtype), self.path)
            self.buffer, self.buffered = [], 0

    def start_unit(self) -> None:
        pass

    def take_last(self) -> list[tuple[np.ndarray]]:
        """Remove the last document written (to move it to the other split); returns it as the one piece of its unit."""
        self.flush()
        self.handle.close()
        ids = np.fromfile(self.path, dtype=self.dtype)
        last_eos = np.flatnonzero(ids[:-1] == ids[-1])
        start = int(last_eos[-1]) + 1 if len(last_eos) else 0
        with self.path.open("r+b") as handle:
            handle.truncate(start * self.dtype.itemsize)
        self.handle = self.path.open("ab")
        self.tokens -= len(ids) - start
        self.written -= 1
        return [(ids[start:].astype(np.int64),)]

    def rows(self, block_size: int, keep_tail: bool = False) -> int:
        """The training rows: how many blocks TokenBlocks will cut (see its `keep_tail`)."""
        full = self.tokens // block_size
        return full + (keep_tail and self.tokens - full * block_size >= 2)

    def close(self) -> None:
        self.flush()
        self.handle.close()

    def rewrite(self, spans: list) -> None:
        """After close: the file again as these documents (`mix.Span`s, repeats allowed) in this order."""
        ids = np.memmap(self.path, dtype=self.dtype, mode="r") if self.tokens else np.zeros(0, dtype=self.dtype)
        mixed = self.path.with_name(self.path.name + ".mix")
        self.path, self.tokens, self.written = mixed, 0, 0
        self.handle = mixed.open("wb")
        for span in spans:
            self.write(np.asarray(ids[span.token_start : span.token_end]))
        self.close()
        del ids
        mixed.replace(mixed.with_name(mixed.name.removesuffix(".mix")))
        self.path = mixed.with_name(mixed.name.removesuffix(".mix"))


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """The Rust tokenizer's batch encoder on all cores; `encode_batch_fast` skips offsets nobody here needs. A special
    token's text inside a document (`<|endoftext|>` in a scraped page) is encoded as the text it is, never as the control
    token: documents end where tunesmith puts the end-of-text id, not where a document says so."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        before = getattr(backend, "encode_special_tokens", False)
        backend.encode_special_tokens = True
        try:
            return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
        finally:
            backend.encode_special_tokens = before
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


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

    def assign(self, doc, rehearsal: bool = False) -> bool | None:
        """True for validation, False for train, None when dropped as a near duplicate.

        Rehearsal text always trains, and is dropped where it nearly copies anything already kept.
        """
        minhash = self.near.minhash(doc.signature)
        match = self.near.match(minhash)
        if match is not None and (self.drop_near or rehearsal):
            self.report.remove("near_duplicate", doc.unit.key)
            return None
        own_side = hash_bucket(doc.digest) < self.val_fraction and not rehearsal
        side = own_side if match is None else self.side_of[match]
        self.moved += side != own_side
        key = self.next_key
        self.next_key += 1
        self.side_of[key] = side
        self.near.add(key, minhash)
        return side
