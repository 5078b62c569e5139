"""`prepare` for chat and classification: records become examples with a loss mask (and a class), not packed text.

The same cleaning transforms, exact and near de-duplication and leak-free split as plain text; the
unit is a conversation or a labelled text, kept whole on one side of the split.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import CleanConfig, DataConfig, TaskSettings
from ..errors import UserError
from ..tasks.chat import merge_turns, parse_record, split_turns, with_system
from .clean import text_digest, transforms
from .dedup import NearDuplicateIndex
from .examples import ExampleWriter
from .pipeline import Splitter, Tokenized, batched, clean_one
from .read import DocumentReader, lookup
from .report import DataReport

IMBALANCE_RATIO = 3.0


@dataclass
class Item:
    """One example before tokenization: a conversation or a labelled text, with the text it is compared by."""

    key_text: str
    messages: list[dict] | None = None
    text: str | None = None
    label: str | None = None


def _table_rows(value, cfg) -> bool:
    return isinstance(value, dict) and cfg.conversation_field in value and cfg.speaker_field in value


def chat_items(reader: DocumentReader, files: list[Path], settings: TaskSettings, data: DataConfig, report: DataReport,
               steps: list) -> Iterator[Item]:
    cfg = settings.chat
    for path in files:
        tables: OrderedDict[str, list] = OrderedDict()
        for record in reader.records([path]):
            where = f"{record.source}:{record.line}"
            if cfg.format in ("auto", "table") and _table_rows(record.value, cfg):
                text = lookup(record.value, data.text_field)
                if text is None:
                    report.remove("missing_field", str(record.value)[:200])
                    continue
                key = str(record.value[cfg.conversation_field])
                tables.setdefault(key, []).append((record.value[cfg.speaker_field], text, where))
                continue
            messages = parse_record(record.value, cfg, where)
            if messages is None:
                report.remove("not_a_conversation", str(record.value)[:200])
                continue
            yield from _finish_conversation(messages, cfg.system_prompt, report, steps)
        for turns in tables.values():
            messages = merge_turns(((speaker, text) for speaker, text, _ in turns), cfg.roles, turns[0][2])
            yield from _finish_conversation(messages, cfg.system_prompt, report, steps)


def _finish_conversation(messages: list[dict], system_prompt, report: DataReport, steps: list) -> Iterator[Item]:
    cleaned = []
    for message in with_system(messages, system_prompt):
        content = clean_one(str(message["content"]), steps, report)
        if content:
            cleaned.append({"role": message["role"], "content": content})
    key = "\n".join(f"{m['role']}: {m['content']}" for m in cleaned)
    if not any(m["role"] == "assistant" for m in cleaned):
        report.remove("no_assistant_turn", key or "(empty)")
        return
    yield Item(key, messages=cleaned)


def classify_items(reader: DocumentReader, files: list[Path], data: DataConfig, clean: CleanConfig, report: DataReport,
                   steps: list) -> Iterator[Item]:
    from ..tasks.classify import label_key

    for record in reader.records(files):
        if isinstance(record.value, str):
            raise UserError(f"{record.source}: classification needs a table or JSON lines with a text and a label "
                            f"(data.text_field, data.label_field); plain text has no labels")
        text = reader.text(record)
        if text is None:
            continue
        label = lookup(record.value, data.label_field)
        if label is None or str(label).strip() == "":
            report.remove("missing_field", str(record.value)[:200])
            continue
        text = clean_one(text, steps, report)
        if not text:
            report.remove("empty", str(record.value)[:200])
        elif len(text) < clean.min_chars:
            report.remove("too_short_chars", text)
        elif clean.max_chars and len(text) > clean.max_chars:
            report.remove("too_long_chars", text)
        else:
            yield Item(text, text=text, label=label_key(label))
    reader.check_fields_found()


class StructuredPreparer:
    """Reads, cleans, de-duplicates and encodes examples, then splits them into the two example files."""

    def __init__(self, data: DataConfig, clean: CleanConfig, settings: TaskSettings, tokenizer, directory: Path, dtype):
        self.data, self.clean, self.settings, self.tokenizer = data, clean, settings, tokenizer
        self.report = DataReport()
        self.steps = transforms(clean)
        self.seen: set[bytes] = set()
        self.near = NearDuplicateIndex(clean.near_threshold)
        self.train = ExampleWriter(directory, "train", dtype)
        self.val = ExampleWriter(directory, "val", dtype)
        self.truncated = 0
        self.near_leaks = 0
        self.kept = {False: 0, True: 0}  # items (conversations, labelled texts) per side; a long conversation makes several examples
        self.coder = None

    def items(self, files: list[Path]) -> list[Item]:
        reader = DocumentReader.for_data(self.data, self.clean, self.report)
        if self.settings.name == "chat":
            found = chat_items(reader, files, self.settings, self.data, self.report, self.steps)
        else:
            found = classify_items(reader, files, self.data, self.clean, self.report, self.steps)
        kept = []
        for item in found:
            digest = text_digest(item.key_text)
            if self.clean.dedup_exact and digest in self.seen:
                self.report.remove("exact_duplicate", item.key_text)
                continue
            self.seen.add(digest)
            kept.append(item)
        return kept

    def set_labels(self, labels: list[str]) -> None:
        from ..tasks.classify import LabelCoder

        self.coder = LabelCoder.from_config(labels, self.settings.classify)

    def _encode(self, item: Item) -> list[tuple[np.ndarray, np.ndarray, int]]:
        if self.settings.name == "chat":
            pieces = []
            for ids, mask, truncated in split_turns(self.tokenizer, item.messages, self.data.block_size):
                self.truncated += truncated
                pieces.append((ids, mask, -1))
            return pieces
        return [self.coder.encode(self.tokenizer, item.text, item.label, self.data.block_size)]

    def encoded(self, items: list[Item]) -> Iterator[tuple[Tokenized, list]]:
        """Each item's pieces, with a MinHash signature over all its tokens for the near-duplicate checks."""
        for batch in batched(items, 256):
            pieces = [self._encode(item) for item in batch]
            whole = [np.concatenate([ids for ids, _, _ in item_pieces]) if item_pieces else np.zeros(0, dtype=np.int64)
                     for item_pieces in pieces]
            for item, item_pieces, ids, signature in zip(batch, pieces, whole, self.near.hasher.signatures(whole)):
                if item_pieces:
                    yield Tokenized(item.key_text, text_digest(item.key_text), ids, signature), item_pieces

    def write(self, items: list[Item], val_fraction: float) -> None:
        splitter = Splitter(val_fraction, self.near, self.clean.dedup_near, self.report)
        for doc, pieces in self.encoded(items):
            side = splitter.assign(doc)
            if side is None:
                continue
            self.kept[side] += 1
            self._write(side, pieces)

    def write_user_val(self, items: list[Item]) -> None:
        """A validation file stays validation; its near copies of training examples are counted, not moved."""
        for doc, pieces in self.encoded(items):
            self.near_leaks += self.near.match(self.near.minhash(doc.signature)) is not None
            self.kept[True] += 1
            self._write(True, pieces)

    def _write(self, side: bool, pieces: list) -> None:
        for ids, mask, label in pieces:
            (self.val if side else self.train).write(ids, mask, label)
            self.report.token_lengths.append(len(ids))

    def balance(self) -> None:
        if self.val.documents == 0 and self.train.documents >= 2:
            self.val.write(*self.train.take_last())
            self.kept = {False: self.kept[False] - 1, True: 1}
        elif self.train.documents == 0 and self.val.documents >= 2:
            self.train.write(*self.val.take_last())
            self.kept = {False: 1, True: self.kept[True] - 1}

    def close(self) -> None:
        self.train.close()
        self.val.close()


def _class_summary(job: StructuredPreparer, labels: list[str]) -> dict:
    counts = Counter(job.train.classes)
    class_counts = {label: counts.get(i, 0) for i, label in enumerate(labels)}
    val_counts = Counter(job.val.classes)
    present = [n for n in class_counts.values() if n]
    if present and max(present) > IMBALANCE_RATIO * min(present):
        job.report.warnings.append(
            f"the classes are imbalanced ({', '.join(f'{k}: {v}' for k, v in class_counts.items())}); "
            "accuracy flatters the majority class: watch macro-F1, or set classify.class_weights=true")
    missing = [label for label, n in class_counts.items() if n == 0]
    if missing:
        job.report.warnings.append(f"no training example has the label {', '.join(missing)}")
    return {"labels": labels, "class_counts": class_counts,
            "val_class_counts": {label: val_counts.get(i, 0) for i, label in enumerate(labels)}}


def prepare_structured(directory: Path, data: DataConfig, clean: CleanConfig, settings: TaskSettings, tokenizer,
                       train_files: list[Path], val_files: list[Path], eval_only: bool, dtype, labels: list[str] | None) -> dict:
    """Write the example files and return the task part of meta.json."""
    from ..tasks.classify import sorted_labels

    job = StructuredPreparer(data, clean, settings, tokenizer, directory, dtype)
    try:
        train_items = job.items(train_files)
        val_items = job.items(val_files) if val_files else []
        task: dict = {"task": settings.name}
        if settings.name == "classify":
            labels = labels or sorted_labels(item.label for item in train_items)
            known = set(labels)
            for items in (train_items, val_items):
                for item in [i for i in items if i.label not in known]:
                    job.report.remove("unknown_label", f"{item.label}: {item.key_text}")
                    items.remove(item)
            job.set_labels(labels)
            task["coder"] = job.coder.as_dict()
        if eval_only:
            job.write(train_items, 1.0)
        elif val_items:
            job.write(train_items, 0.0)
            job.write_user_val(val_items)
            task["val_near_copies"] = job.near_leaks
            if job.near_leaks:
                job.report.warnings.append(f"data.val: {job.near_leaks} validation examples are near copies of training examples; "
                                           "their scores flatter the model: remove them from one side")
        else:
            job.write(train_items, data.val_fraction)
            job.balance()
    finally:
        job.close()
    if settings.name == "classify":
        task.update(_class_summary(job, labels))
    if job.truncated:
        task["truncated"] = job.truncated
        job.report.warnings.append(f"{job.truncated} examples were longer than data.block_size={data.block_size} "
                                   "and were truncated; raise data.block_size to keep them whole")
    task["targets"] = {"train": job.train.targets, "val": job.val.targets}
    job.report.task = {k: v for k, v in task.items() if k != "coder"}
    job.report.splits = {
        "train": {"documents": job.kept[False], "examples": job.train.documents, "tokens": job.train.tokens},
        "val": {"documents": job.kept[True], "examples": job.val.documents, "tokens": job.val.tokens},
    }
    return {"task_meta": task, "report": job.report, "counts": (job.train, job.val)}
