"""The one preparer: a task's units in, de-duplicated and split without leaks, encoded, and streamed to the split files.

Whatever the task, the same stage runs: exact de-duplication by digest, encoding in batches (in a
worker thread, so the tokenizer overlaps reading and cleaning), MinHash signatures, the split that
keeps near-duplicates with their cluster, the leak check of a validation file, the balance of two
non-empty sides, and the meta and report. The task (a `UnitKind`) supplies units and their encoding.
Memory holds the de-duplication index, not the data.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..config import CleanConfig, DataConfig
from ..errors import UserError
from .clean import text_digest, transforms
from .dedup import NearDuplicateIndex
from .examples import ExampleWriter
from .mix import Span, mixed_order, source_shares
from .pipeline import BATCH_DOCUMENTS, Splitter, TokenWriter, batched
from .read import DocumentReader
from .report import DataReport
from .units import FIELDS_HINT, Encoded, Unit, UnitKind

MIX_SEED = 0


@dataclass
class Source:
    """One source of training units: its files, its weight (None: unweighted), and whether it is rehearsal text.

    Rehearsal text (data.replay) is read as plain {"text": ...} records whatever the data's own fields, goes to
    training only, and is dropped where it nearly copies a document of the data.
    """

    name: str
    files: list[Path]
    weight: float | None = None
    rehearsal: bool = False


class Preparer:
    def __init__(self, kind: UnitKind, data: DataConfig, clean: CleanConfig, tokenizer, directory: Path, dtype):
        self.kind, self.data, self.clean, self.tokenizer = kind, data, clean, tokenizer
        self.report = DataReport()
        self.steps = transforms(clean)
        self.seen: set[bytes] = set()
        self.near = NearDuplicateIndex(clean.near_threshold)
        writer = TokenWriter if kind.layout == "packed" else ExampleWriter
        self.train, self.val = writer(directory, "train", dtype), writer(directory, "val", dtype)
        self.spans: dict[bool, list[Span]] = {False: [], True: []}  # each side's units, where its writer put them
        self.kept_before_mix: dict[bool, int] | None = None

    @property
    def units_kept(self) -> dict[bool, int]:
        """Each side's units after cleaning and the split (a weighted mix then draws some training units more than once
        and others not at all: those draws are the mix's figures, not units kept)."""
        return self.kept_before_mix or {side: len(spans) for side, spans in self.spans.items()}

    def _unique(self, units: Iterable[Unit]) -> Iterator[tuple[Unit, bytes]]:
        for unit in units:
            digest = text_digest(unit.key)
            if self.clean.dedup_exact and digest in self.seen:
                self.report.remove("exact_duplicate", unit.key)
                continue
            self.seen.add(digest)
            yield unit, digest

    def encoded(self, files: list[Path], data: DataConfig | None = None) -> Iterator[Encoded]:
        """The files' units, encoded a batch at a time while the next batch is read, each with its MinHash signature."""
        kind, report, data = self.kind, self.report, data or self.data
        stream = self._unique(kind.units(lambda into: DocumentReader.for_data(data, self.clean, into), files, data, self.clean, report))

        def encode(batch: list[tuple[Unit, bytes]]) -> list[Encoded]:
            digests = {id(unit): digest for unit, digest in batch}
            done = kind.encode([unit for unit, _ in batch], self.tokenizer, data, self.clean, report)
            for item in done:
                item.digest = digests[id(item.unit)]
            return done

        def signed(done: list[Encoded]) -> Iterator[Encoded]:
            if not done:  # a batch whose every unit was dropped while encoding (all beyond data.block_size, say)
                return
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

    def _write(self, side: bool, pieces: list[tuple], source: int) -> None:
        writer = self.val if side else self.train
        tokens, examples = writer.tokens, writer.written
        writer.start_unit()
        for piece in pieces:
            writer.write(*piece)
        self.spans[side].append(Span(source, tokens, writer.tokens, examples, writer.written))

    def split(self, sources: list[Source], val_fraction: float) -> Splitter:
        """Every source through one de-duplication index and one splitter, so both work across sources as within one."""
        splitter = Splitter(val_fraction, self.near, self.clean.dedup_near, self.report)
        for number, source in enumerate(sources):
            data = self.data.model_copy(update={"text_field": "text", "template": None}) if source.rehearsal else None
            for item in self.encoded(source.files, data):
                side = splitter.assign(item, rehearsal=source.rehearsal)
                if side is not None:
                    self._write(side, item.pieces, number)
                    self.report.token_lengths.extend(item.lengths)
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
            self._write(True, item.pieces, 0)
            self.report.token_lengths.extend(item.lengths)
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
            if target.written == 0 and self.units_kept[not side] >= 2:
                moved = self.spans[not side].pop()
                self._write(side, source.take_last(), moved.source)
                return

    def run(self, sources: list[Source], val_files: list[Path], eval_only: bool) -> None:
        try:
            if eval_only:
                self.split(sources, 1.0)
            elif val_files:
                self.split(sources, 0.0)
                self.report.leakage = self.user_val(val_files)
                if self.train.written and not self.val.written:
                    raise UserError(f"no validation documents in data.val ({_named(list(map(str, val_files)))}: empty, or none "
                                    "left after cleaning); give validation files with text (--val-data)")
            else:
                splitter = self.split(sources, self.data.val_fraction)
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
        if self.train.written + self.val.written == 0:
            raise nothing_left(self.report, self.kind.fields_hint)
        if not eval_only and (len(sources) > 1 or sources[0].weight is not None):
            self.mix(sources)

    def mix(self, sources: list[Source]) -> None:
        """Resample the training units so each source has its share of the training tokens (data.train weights, data.replay)."""
        spans = self.spans[False]
        self.kept_before_mix = self.units_kept
        replay = self.data.replay if sources[-1].rehearsal else 0.0
        for number, source in enumerate(sources):
            if not any(span.source == number for span in spans):
                if source.rehearsal:
                    self.report.warnings.append("data.replay: no rehearsal text is left after de-duplication; training without it")
                    sources, replay = sources[:-1], 0.0
                    continue
                raise UserError(f"data.train source {source.name}: no training {self.kind.unit_words} left after cleaning and the split; "
                                "check its files, or drop it")
        order, figures = mixed_order(spans, source_shares([s.weight for s in sources], replay), replay, MIX_SEED)
        self.spans[False] = [spans[i] for i in order]
        self.train.rewrite(self.spans[False])
        self.report.mix = [{"source": source.name, "weight": source.weight, "rehearsal": source.rehearsal, **figure}
                           for source, figure in zip(sources, figures)]

    def splits(self) -> dict:
        return {name: {"documents": self.units_kept[side], "examples": writer.written, "tokens": writer.tokens,
                       "rows": writer.rows(self.data.block_size, keep_tail=side)}
                for name, side, writer in (("train", False, self.train), ("val", True, self.val))}


def _named(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _empty(paths: list[str]) -> str:
    if not paths:
        return "empty files?"
    return f"{_named(paths)} {'has' if len(paths) == 1 else 'have'} none"


def nothing_left(report: DataReport, hint: str = FIELDS_HINT) -> UserError:
    if not report.read:
        return UserError(f"the data holds no documents ({_empty(report.empty_files)}); give files with text (data.train, or "
                         "the file after --data)")
    if not report.removed:  # every unit was read and kept, and none made an example: all of them past the block
        return UserError(f"no documents left: {report.read} read, and none made an example whose targets fit in "
                         "data.block_size; raise data.block_size")
    removed = sorted(report.removed.items(), key=lambda item: -item[1])
    if removed[0][0].endswith("_beyond_block_size"):
        hint = "raise data.block_size"
    elif removed[0][0] == "unknown_label":
        hint = "their labels are none this run reads (a trained model's own, or a thumbs up or down); check data.label_field and the labels"
    reasons = ", ".join(f"{count} as {step.replace('_', ' ')}" for step, count in removed)
    return UserError(f"no documents left: {report.read} read, {reasons.replace(' as ', ' removed as ', 1)}; {hint}")
