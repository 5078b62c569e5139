"""The `prepare` step: documents in; token files, meta.json and a data report out, cached by content, tokenizer and settings."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..config import CleanConfig, DataConfig, TaskSettings
from ..errors import UserError
from ..fingerprint import file_sha256
from .blocks import TokenBlocks
from .examples import Examples
from .clean import text_digest
from .dedup import NearDuplicateIndex
from .pipeline import (Splitter, TokenWriter, Tokenized, boilerplate_set, count_lines, exact_unique, tokenized, transformed,
                       without_boilerplate, write_splits)
from .read import DocumentReader, expand_paths
from .report import DataReport, summary_lines
from .tokens import token_dtype, tokenizer_fingerprint

FORMAT_VERSION = 2
# boilerplate lines are found in the first documents: a line common enough to be boilerplate shows up
# there, and the first pass stays cheap and its memory bounded however large the corpus
BOILERPLATE_SAMPLE = 10_000


@dataclass
class PreparedData:
    directory: Path
    meta: dict
    from_cache: bool

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    @property
    def report(self) -> dict:
        return json.loads((self.directory / "data_report.json").read_text())

    @property
    def task(self) -> str:
        return self.meta.get("task", {}).get("task", "lm")

    def blocks(self, split: str, block_size: int | None = None, class_weights=None) -> TokenBlocks | Examples:
        """Packed blocks of text, or (chat, classify) the split's examples."""
        if self.task != "lm":
            head = self.task == "classify" and self.meta["task"]["coder"]["method"] == "head"
            return Examples(self.directory, split, self.dtype, self.meta["pad_token_id"], use_classes=head, class_weights=class_weights)
        size = block_size or self.meta["settings"]["block_size"]
        return TokenBlocks(self.directory / f"{split}.bin", self.dtype, size, keep_tail=(split == "val"))

    def summary_lines(self) -> list[str]:
        lines = summary_lines(self.report, self.meta)
        if self.from_cache:
            lines.append(f"cached: {self.directory} (unchanged inputs, tokenizer and settings)")
        return lines


def _cache_key(train_files: list[Path], val_files: list[Path], tokenizer_id: str, settings: dict) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION}|{tokenizer_id}|{json.dumps(settings, sort_keys=True)}".encode())
    for role, files in (("train", train_files), ("val", val_files)):
        for path in files:
            digest.update(f"|{role}|{path.name}|{file_sha256(path)}".encode())
    return digest.hexdigest()[:20]


class _Preparer:
    """One preparation run: the streams of train (and validation) documents into two token files."""

    def __init__(self, cfg: DataConfig, clean: CleanConfig, tokenizer, directory: Path):
        self.cfg, self.clean, self.tokenizer = cfg, clean, tokenizer
        self.report = DataReport()
        self.dtype = token_dtype(len(tokenizer))
        self.train = TokenWriter(directory / "train.bin", self.dtype)
        self.val = TokenWriter(directory / "val.bin", self.dtype)
        self.seen: set[bytes] = set()
        self.near = NearDuplicateIndex(clean.near_threshold)

    def _reader(self, report: DataReport) -> DocumentReader:
        return DocumentReader.for_data(self.cfg, self.clean, report)

    def _documents(self, files: list[Path]) -> Iterator[Tokenized]:
        texts: Iterable[str] = transformed(self._reader(self.report).read(files), self.clean, self.report)
        if self.clean.boilerplate:
            counts, documents = count_lines(islice(self._reader(DataReport()).read(files), BOILERPLATE_SAMPLE))
            texts = without_boilerplate(texts, boilerplate_set(counts, documents, self.clean), counts, self.report)
        if self.clean.dedup_exact:
            unique = exact_unique(texts, self.seen, self.report)
        else:
            unique = ((text, text_digest(text)) for text in texts)
        return tokenized(unique, self.tokenizer, self.clean, self.near.hasher, self.report)

    def run_split(self, files: list[Path], val_fraction: float) -> Splitter:
        splitter = Splitter(val_fraction, self.near, self.clean.dedup_near, self.report)
        write_splits(self._documents(files), splitter, self.train, self.val)
        return splitter

    def run_user_val(self, files: list[Path]) -> dict:
        """Validation documents from data.val, checked against the training data for exact and near copies."""
        train_digests, self.seen = self.seen, set()
        exact, near, examples = 0, 0, []
        for doc in self._documents(files):
            leaked_exactly = doc.digest in train_digests
            leaked_nearly = not leaked_exactly and self.near.match(self.near.minhash(doc.signature)) is not None
            exact += leaked_exactly
            near += leaked_nearly
            if (leaked_exactly or leaked_nearly) and len(examples) < 3:
                examples.append(" ".join(doc.text.split())[:160])
            self.val.write(doc.ids)
            self.report.token_lengths.append(len(doc.ids) - 1)
        total = self.val.documents
        summary = (f"{exact} exact and {near} near copies of training documents among {total} validation documents"
                   if exact or near else f"none of the {total} validation documents has an exact or near copy in training")
        if exact or near:
            self.report.warnings.append(f"data.val: {exact + near} of {total} validation documents also appear (nearly) in training; "
                                        "their perplexity flatters the model: remove them from one side")
        return {"method": "user validation file", "exact_copies": exact, "near_copies": near, "examples": examples, "summary": summary}

    def balance(self) -> None:
        """At least one document on each side, when there are two or more."""
        if self.val.documents == 0 and self.train.documents >= 2:
            self.val.write(self.train.take_last())
        elif self.train.documents == 0 and self.val.documents >= 2:
            self.train.write(self.val.take_last())

    def close(self) -> None:
        self.train.close()
        self.val.close()


def _nothing_left(report: DataReport) -> UserError:
    if not report.read:
        return UserError("the data holds no documents (empty files?); check data.train")
    worst = max(report.removed.items(), key=lambda item: item[1])
    return UserError(
        f"no documents left: {report.read} read, {worst[1]} removed as {worst[0].replace('_', ' ')}; "
        "check data.text_field/template or switch that clean.* step off"
    )


def _warn(report: DataReport, meta: dict, block_size: int, model_params: int | None) -> None:
    for row in report.steps():
        if row["in"] and row["removed"] / row["in"] > 0.5:
            report.warnings.append(f"{row['step'].replace('_', ' ')} removed {row['removed']:,} of {row['in']:,} documents; check that step's settings")
    if report.lines_with_bad_bytes:
        report.warnings.append(f"{report.lines_with_bad_bytes:,} lines were not valid UTF-8 and were decoded with replacement characters")
    train_tokens, val_tokens = meta["train"]["tokens"], meta["val"]["tokens"]
    if model_params and train_tokens and train_tokens * 100 < model_params:
        report.warnings.append(
            f"train has {train_tokens:,} tokens; a {model_params / 1e6:.0f}M-parameter model will memorize this in a few epochs: "
            "use model.method=freeze, fewer epochs or more data, and watch the validation loss"
        )
    if 0 < val_tokens < max(2 * block_size, 2000):
        report.warnings.append(f"validation has only {val_tokens:,} tokens; its perplexity will be noisy: raise data.val_fraction or add data")


def prepare_data(cfg: DataConfig, clean: CleanConfig, tokenizer, cache_root: Path, eval_only: bool = False,
                 model_params: int | None = None, task: TaskSettings = TaskSettings(), labels: list[str] | None = None) -> PreparedData:
    """Read, clean, de-duplicate, split, tokenize and pack `cfg.train` (and `cfg.val`); reuse the cache when nothing changed.

    With `eval_only`, every document of `cfg.train` goes to the validation split (for `tunesmith eval`).
    Chat and classify tasks keep examples whole (with a loss mask) instead of packing text; `labels`
    fixes the label set (a trained classifier's) instead of discovering it.
    """
    if not cfg.train:
        raise UserError("data.train: no training data given; pass --data FILE (or a folder or glob)")
    train_files = expand_paths(cfg.train, "data.train")
    val_files = expand_paths(cfg.val, "data.val") if cfg.val and not eval_only else []
    settings = {**cfg.model_dump(mode="json", exclude={"train", "val"}), "clean": clean.model_dump(mode="json"), "eval_only": eval_only,
                **task.cache_settings(), **({"labels": labels} if labels else {})}
    if task.name == "lm":
        settings.pop("label_field")  # plain-text caches do not depend on it
    key = _cache_key(train_files, val_files, tokenizer_fingerprint(tokenizer), settings)
    directory = cache_root / "data" / key
    if (directory / "meta.json").is_file():
        return PreparedData(directory, json.loads((directory / "meta.json").read_text()), from_cache=True)

    partial = directory.with_name(f"{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if task.name == "lm":
            meta = _prepare_into(partial, cfg, clean, tokenizer, train_files, val_files, eval_only, model_params, settings)
        else:
            meta = _prepare_examples_into(partial, cfg, clean, task, tokenizer, train_files, val_files, eval_only, settings, labels)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        partial.rename(directory)
    except OSError:  # the same data was prepared concurrently
        shutil.rmtree(partial, ignore_errors=True)
    return PreparedData(directory, meta, from_cache=False)


def _prepare_into(directory: Path, cfg: DataConfig, clean: CleanConfig, tokenizer, train_files: list[Path], val_files: list[Path],
                  eval_only: bool, model_params: int | None, settings: dict) -> dict:
    job = _Preparer(cfg, clean, tokenizer, directory)
    try:
        if eval_only:
            job.run_split(train_files, 1.0)
        elif val_files:
            job.run_split(train_files, 0.0)
            job.report.leakage = job.run_user_val(val_files)
        else:
            splitter = job.run_split(train_files, cfg.val_fraction)
            job.balance()
            dropped = job.report.removed.get("near_duplicate", 0)
            job.report.leakage = {
                "method": "MinHash LSH clusters kept on one side",
                "near_duplicates_removed": dropped,
                "kept_with_their_cluster": splitter.moved,
                "crossing_the_split": 0,
                "summary": f"no near-duplicate crosses the split ({dropped} removed, {splitter.moved} kept on their cluster's side)",
            }
    finally:
        job.close()
    if job.train.documents + job.val.documents == 0:
        raise _nothing_left(job.report)
    _check_sizes(job.train.tokens, job.val.tokens, cfg.block_size, eval_only)
    val_blocks = TokenBlocks(directory / "val.bin", job.dtype, cfg.block_size, keep_tail=True)
    job.report.splits = {
        "train": {"documents": job.train.documents, "tokens": job.train.tokens},
        "val": {"documents": job.val.documents, "tokens": job.val.tokens},
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "dtype": job.dtype.name,
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "settings": settings,
        "sources": {"train": [str(p) for p in train_files], "val": [str(p) for p in val_files]},
        "train": {"documents": job.train.documents, "tokens": job.train.tokens, "blocks": job.train.tokens // cfg.block_size},
        "val": {"documents": job.val.documents, "tokens": job.val.tokens, "blocks": len(val_blocks)},
    }
    _warn(job.report, meta, cfg.block_size, model_params)
    job.report.write(directory)
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def _prepare_examples_into(directory: Path, cfg: DataConfig, clean: CleanConfig, task: TaskSettings, tokenizer,
                           train_files: list[Path], val_files: list[Path], eval_only: bool, settings: dict, labels) -> dict:
    from .structured import prepare_structured

    dtype = token_dtype(len(tokenizer))
    result = prepare_structured(directory, cfg, clean, task, tokenizer, train_files, val_files, eval_only, dtype, labels)
    report, (train, val) = result["report"], result["counts"]
    unit = "conversations" if task.name == "chat" else "examples"
    if train.documents + val.documents == 0:
        raise _nothing_left(report)
    if val.documents == 0 or (train.documents == 0 and not eval_only):
        raise UserError(f"{train.documents} training and {val.documents} validation {unit} after cleaning; "
                        "at least one of each is needed: add data or pass a validation file with --val-data")
    if task.name == "chat" and not result["task_meta"]["targets"]["val"]:
        raise UserError("the validation conversations have no assistant tokens; check chat.roles")
    meta = {
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "settings": settings,
        "sources": {"train": [str(p) for p in train_files], "val": [str(p) for p in val_files]},
        "task": result["task_meta"],
        "train": {"documents": train.documents, "tokens": train.tokens, "blocks": train.documents},
        "val": {"documents": val.documents, "tokens": val.tokens, "blocks": val.documents},
    }
    removed = f"{report.removed.get('exact_duplicate', 0)} exact and {report.removed.get('near_duplicate', 0)} near duplicates removed"
    leaks = result["task_meta"].get("val_near_copies", 0)
    report.leakage = {"method": "exact and MinHash near-duplicate checks; a near-duplicate stays on its cluster's side",
                      "summary": f"{leaks} validation {unit} are near copies of training ones ({removed})" if leaks
                      else f"no exact or near copy of an example crosses the split ({removed})"}
    report.write(directory)
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def _check_sizes(train_tokens: int, val_tokens: int, block_size: int, eval_only: bool) -> None:
    if val_tokens < 2:
        if eval_only:
            raise UserError(f"the data has {val_tokens} tokens after cleaning; at least 2 are needed to measure perplexity")
        raise UserError(f"the validation split has {val_tokens} tokens (one document left after cleaning?); "
                        "add documents or pass a validation file with --val-data")
    if not eval_only and train_tokens < block_size:
        raise UserError(
            f"the training split has {train_tokens} tokens, fewer than one block of {block_size}; "
            f"add more text or lower data.block_size to at most {max(8, train_tokens)}"
        )


def prepare_eval_data(paths: list[str], cfg: DataConfig, clean: CleanConfig, tokenizer, cache_root: Path,
                      task: TaskSettings = TaskSettings(), labels: list[str] | None = None) -> PreparedData:
    eval_cfg = cfg.model_copy(update={"train": paths, "val": []})
    return prepare_data(eval_cfg, clean, tokenizer, cache_root, eval_only=True, task=task, labels=labels)
