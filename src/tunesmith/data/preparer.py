"""The one preparer: a task's units in, de-duplicated and split without leaks, encoded, and streamed to the split files.

Whatever the task, the same stage runs: exact de-duplication by digest, encoding in batches (in a
worker thread, so the tokenizer overlaps reading and cleaning), MinHash signatures, the split that
keeps near-duplicates with their cluster, the leak check of a validation file, the balance of two
non-empty sides, and the meta and report. The task (a `UnitKind`) supplies units and their encoding.
Memory holds the de-duplication index, not the data.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

from ..config import CleanConfig, DataConfig
from ..errors import UserError
from .clean import text_digest, transforms
from .dedup import NearDuplicateIndex
from .examples import ExampleWriter
from .pipeline import BATCH_DOCUMENTS, Splitter, TokenWriter, batched
from .read import DocumentReader
from .report import DataReport
from .units import FIELDS_HINT, Encoded, Unit, UnitKind


class Preparer:
    def __init__(self, kind: UnitKind, data: DataConfig, clean: CleanConfig, tokenizer, directory: Path, dtype):
        self.kind, self.data, self.clean, self.tokenizer = kind, data, clean, tokenizer
        self.report = DataReport()
        self.steps = transforms(clean)
        self.seen: set[bytes] = set()
        self.near = NearDuplicateIndex(clean.near_threshold)
        writer = TokenWriter if kind.layout == "packed" else ExampleWriter
        self.train, self.val = writer(directory, "train", dtype), writer(directory, "val", dtype)
        self.units_kept = {False: 0, True: 0}  # a long conversation can make several examples on its side

    def reader(self, report: DataReport) -> DocumentReader:
        return DocumentReader.for_data(self.data, self.clean, report)

    def _unique(self, units: Iterable[Unit]) -> Iterator[tuple[Unit, bytes]]:
        for unit in units:
            digest = text_digest(unit.key)
            if self.clean.dedup_exact and digest in self.seen:
                self.report.remove("exact_duplicate", unit.key)
                continue
            self.seen.add(digest)
            yield unit, digest

    def encoded(self, files: list[Path]) -> Iterator[Encoded]:
        """The files' units, encoded a batch at a time while the next batch is read, each with its MinHash signature."""
        kind, report = self.kind, self.report
        stream = self._unique(kind.units(self.reader, files, self.data, self.clean, report))

        def encode(batch: list[tuple[Unit, bytes]]) -> list[Encoded]:
            digests = {id(unit): digest for unit, digest in batch}
            done = kind.encode([unit for unit, _ in batch], self.tokenizer, self.data, self.clean, report)
            for item in done:
                item.digest = digests[id(item.unit)]
            return done

        def signed(done: list[Encoded]) -> Iterator[Encoded]:
            for item, signature in zip(done, self.near.hasher.signatures([item.ids for item in done])):
                item.signature = signature
                yield item

        with ThreadPoolExecutor(max_workers=1) as worker:
            pending = None
            for batch in batched(stream, BATCH_DOCUMENTS):
                future = worker.submit(encode, batch)
                if pending is not None:
                    yield from signed(pending.result())
                pending = future
            if pending is not None:
                yield from signed(pending.result())

    def _write(self, side: bool, item: Encoded) -> None:
        self.units_kept[side] += 1
        writer = self.val if side else self.train
        writer.start_unit()
        for piece in item.pieces:
            writer.write(*piece)
        self.report.token_lengths.extend(item.lengths)

    def split(self, files: list[Path], val_fraction: float) -> Splitter:
        splitter = Splitter(val_fraction, self.near, self.clean.dedup_near, self.report)
        for item in self.encoded(files):
            side = splitter.assign(item)
            if side is not None:
                self._write(side, item)
        return splitter

    def user_val(self, files: list[Path]) -> dict:
        """Validation units from data.val, kept there, and checked against the training data for exact and near copies."""
        train_digests, self.seen = self.seen, set()
        exact, near, examples, total = 0, 0, [], 0
        for item in self.encoded(files):
            leaked_exactly = item.digest in train_digests
            leaked_nearly = not leaked_exactly and self.near.match(self.near.minhash(item.signature)) is not None
            exact += leaked_exactly
            near += leaked_nearly
            total += 1
            if (leaked_exactly or leaked_nearly) and len(examples) < 3:
                examples.append(" ".join(item.unit.key.split())[:160])
            self._write(True, item)
        words = self.kind.unit_words
        summary = (f"{exact} exact and {near} near copies of training {words} among {total} validation {words}"
                   if exact or near else f"none of the {total} validation {words} has an exact or near copy in training")
        if exact or near:
            self.report.warnings.append(f"data.val: {exact + near} of {total} validation {words} also appear (nearly) in training; "
                                        "their scores flatter the model: remove them from one side")
        return {"method": "user validation file", "exact_copies": exact, "near_copies": near, "examples": examples, "summary": summary}

    def balance(self) -> None:
        """At least one unit on each side, when there are two or more."""
        for source, target, side in ((self.train, self.val, True), (self.val, self.train, False)):
            if target.documents == 0 and self.units_kept[not side] >= 2:
                target.start_unit()
                for piece in source.take_last():
                    target.write(*piece)
                self.units_kept[not side] -= 1
                self.units_kept[side] += 1
                return

    def run(self, train_files: list[Path], val_files: list[Path], eval_only: bool) -> None:
        try:
            if eval_only:
                self.split(train_files, 1.0)
            elif val_files:
                self.split(train_files, 0.0)
                self.report.leakage = self.user_val(val_files)
            else:
                splitter = self.split(train_files, self.data.val_fraction)
                self.balance()
                dropped = self.report.removed.get("near_duplicate", 0)
                self.report.leakage = {
                    "method": "MinHash LSH clusters kept on one side",
                    "near_duplicates_removed": dropped,
                    "kept_with_their_cluster": splitter.moved,
                    "crossing_the_split": 0,
                    "summary": f"no near-duplicate crosses the split ({dropped} removed, {splitter.moved} kept on their cluster's side)",
                }
        finally:
            self.train.close()
            self.val.close()
        if self.train.documents + self.val.documents == 0:
            raise nothing_left(self.report, self.kind.fields_hint)

    def splits(self) -> dict:
        return {name: {"documents": self.units_kept[side], "examples": writer.documents, "tokens": writer.tokens,
                       "blocks": writer.blocks(self.data.block_size, keep_tail=side)}
                for name, side, writer in (("train", False, self.train), ("val", True, self.val))}


def nothing_left(report: DataReport, hint: str = FIELDS_HINT) -> UserError:
    if not report.read:
        return UserError("the data holds no documents (empty files?); check data.train")
    worst = max(report.removed.items(), key=lambda item: item[1])
    return UserError(
        f"no documents left: {report.read} read, {worst[1]} removed as {worst[0].replace('_', ' ')}; {hint}"
    )
