"""The `prepare` step: files in; token files, meta.json and a data report out, cached by content, tokenizer and settings."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import CleanConfig, DataConfig
from ..errors import UserError
from ..rundir.durable import own_partial
from ..rundir.fingerprint import file_sha256
from ..rundir.folder import DATA_REPORT, PREPARED_META
from .blocks import TokenBlocks
from .examples import Examples
from .preparer import Preparer, Source
from .read import DocumentReader, expand_paths
from .report import DataReport, summary_lines
from .tokens import token_dtype, tokenizer_fingerprint
from .units import TextUnits, UnitKind

FORMAT_VERSION = 8
VALIDATION_FINGERPRINT = "v2"  # the form of validation_fingerprint's; a checkpoint's record of another form is not compared


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
        return json.loads((self.directory / DATA_REPORT).read_text())

    def split(self, split: str, block_size: int | None = None, use_classes: bool = False,
               class_weights=None, documents_apart: bool = False) -> TokenBlocks | Examples:
        """The split as packed blocks of text (`documents_apart`: see TokenBlocks), or as whole examples (with their
        classes, for a classification head)."""
        if self.meta["layout"] == "examples":
            return Examples(self.directory, split, self.dtype, self.meta["pad_token_id"], use_classes, class_weights)
        size = block_size or self.meta["settings"]["block_size"]
        return TokenBlocks(self.directory / f"{split}.bin", self.dtype, size, keep_tail=(split == "val"),
                           document_end=self.meta["eos_token_id"] if documents_apart else None)

    def summary_lines(self) -> list[str]:
        lines = summary_lines(self.report, self.meta)
        if self.from_cache:
            lines.append(f"cached: {self.directory} (unchanged inputs, tokenizer and settings)")
        return lines


def validation_fingerprint(directory: Path, **scoring) -> str:
    """What a run's evaluations are scored on: the prepared validation split's files (its tokens, and for whole examples
    their masks, offsets and classes) and the settings that cut and score them (`scoring`: the block size, the packing,
    how many blocks). Two runs, or a run and its resume, whose fingerprints differ have evaluations that do not compare."""
    digest = hashlib.sha256(json.dumps(scoring, sort_keys=True).encode())
    for path in sorted(p for p in directory.iterdir() if p.name.startswith("val.")):
        digest.update(f"|{path.name}|".encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return f"{VALIDATION_FINGERPRINT}:{digest.hexdigest()[:20]}"


def _cache_key(sources: list[Source], val_files: list[Path], tokenizer_id: str, settings: dict) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION}|{tokenizer_id}|{json.dumps(settings, sort_keys=True)}".encode())
    roles = [(f"train{number}|{source.weight}|{source.rehearsal}", source.files) for number, source in enumerate(sources)]
    for role, files in [*roles, ("val", val_files)]:
        for path in files:
            digest.update(f"|{role}|{path.name}|{file_sha256(path)}".encode())
    return digest.hexdigest()[:20]


def training_sources(cfg: DataConfig, replay_files: list[Path], eval_only: bool) -> list[Source]:
    """data.train as sources (one, unless weighted), and the rehearsal text last when data.replay is on."""
    if eval_only:
        return [Source("data", expand_paths(cfg.train_paths, "data.train"))]
    sources = [Source(", ".join(paths), expand_paths(paths, "data.train"), weight) for paths, weight in cfg.sources]
    if cfg.replay:
        if not replay_files:
            raise UserError("data.replay: no rehearsal text was given to mix in")
        sources.append(Source("rehearsal", replay_files, rehearsal=True))
    return sources


def _warn(report: DataReport, meta: dict, block_size: int, model_params: int | None) -> None:
    for row in report.steps():
        if row["in"] and row["removed"] / row["in"] > 0.5:
            report.warnings.append(f"{row['step'].replace('_', ' ')} removed {row['removed']:,} of {row['in']:,} documents; check that step's settings")
    if report.lines_with_bad_bytes:
        report.warnings.append(f"{report.lines_with_bad_bytes:,} lines were not valid UTF-8 and were decoded with replacement characters")
    if meta["layout"] != "packed":  # the token-count advice below is about packed text's perplexity
        return
    train_tokens, val_tokens = meta["train"]["tokens"], meta["val"]["tokens"]
    if model_params and train_tokens and train_tokens * 100 < model_params:
        report.warnings.append(
            f"train has {train_tokens:,} tokens; a {model_params / 1e6:.0f}M-parameter model will memorize this in a few epochs: "
            "use model.method=freeze, fewer epochs or more data, and watch the validation loss"
        )
    if 0 < val_tokens < max(2 * block_size, 2000):
        report.warnings.append(f"validation has only {val_tokens:,} tokens; its perplexity will be noisy: raise data.val_fraction or add data")


def prepare_data(cfg: DataConfig, clean: CleanConfig, tokenizer, cache_root: Path, eval_only: bool = False,
                 model_params: int | None = None, task: UnitKind | None = None, replay_files: list[Path] = ()) -> PreparedData:
    """Read, clean, de-duplicate, split and tokenize `cfg.train` (and `cfg.val`); reuse the cache when nothing changed.

    `task` supplies the units and their encoding (plain text, packed, by default). With `eval_only`,
    every unit of `cfg.train` goes to the validation split (for `tunesmith eval`). Weighted sources and
    `replay_files` (the rehearsal text of data.replay, {"text": ...} records) are mixed into training by their shares.
    """
    task = task or TextUnits()
    if not cfg.train:
        raise UserError("data.train: no training data given; pass --data FILE (or a folder or glob)")
    sources = training_sources(cfg, list(replay_files), eval_only)
    val_files = expand_paths(cfg.val, "data.val") if cfg.val and not eval_only else []
    settings = {**cfg.model_dump(mode="json", exclude={"train", "val", "label_field", "packing"}), "clean": clean.model_dump(mode="json"),
                "eval_only": eval_only, **task.cache_settings()}
    key = _cache_key(sources, val_files, tokenizer_fingerprint(tokenizer), settings)
    directory = cache_root / "data" / key
    if directory.is_symlink():  # a link put in the cache's place is replaced, never read through
        directory.unlink(missing_ok=True)
    if directory.exists():  # put in place whole, by a rename: anything amiss there is damage
        meta = _whole_cache(directory)
        if meta is not None:
            return PreparedData(directory, meta, from_cache=True)
        aside = own_partial(directory)  # damaged (a disk that filled, a file cut short): prepared again
        try:
            directory.rename(aside)
        except OSError:
            pass  # another process moved it aside first
        shutil.rmtree(aside, ignore_errors=True)

    partial = own_partial(directory)
    partial.mkdir(parents=True)
    try:
        meta = _prepare_into(partial, cfg, clean, task, tokenizer, sources, val_files, eval_only, model_params, settings)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        partial.rename(directory)
    except OSError:  # the same data was prepared concurrently
        shutil.rmtree(partial, ignore_errors=True)
    return PreparedData(directory, meta, from_cache=False)


def _whole_cache(directory: Path) -> dict | None:
    """The cached data's meta where each file it needs (each split's tokens, and an example layout's mask, offsets and
    classes) holds the bytes it was written with, else None."""
    try:
        meta = json.loads((directory / PREPARED_META).read_text(encoding="utf-8"))
        itemsize = np.dtype(meta["dtype"]).itemsize
        if any((directory / f"{split}.bin").stat().st_size != meta[split]["tokens"] * itemsize for split in ("train", "val")):
            return None  # meta.json's own record edited or torn: its dtype or counts no longer fit the files
        names = _token_files(meta["layout"])
        if not all((directory / name).is_file() for name in names):  # never read a pipe or a folder in a file's place
            return None
        checksums = meta["checksums"]
        if any(file_sha256(directory / name) != checksums.get(name) for name in names):
            return None
        json.loads((directory / DATA_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta


def _token_files(layout: str) -> list[str]:
    """The files a prepared layout's splits are read from."""
    kinds = ["bin", "mask.bin", "offsets.npy", "classes.npy"] if layout == "examples" else ["bin"]
    return [f"{split}.{kind}" for split in ("train", "val") for kind in kinds]


def _prepare_into(directory: Path, cfg: DataConfig, clean: CleanConfig, task: UnitKind, tokenizer, sources: list[Source],
                  val_files: list[Path], eval_only: bool, model_params: int | None, settings: dict) -> dict:
    dtype = token_dtype(len(tokenizer))
    job = Preparer(task, cfg, clean, tokenizer, directory, dtype)
    train_files = [path for source in sources if not source.rehearsal for path in source.files]
    task.begin(lambda report: DocumentReader.for_data(cfg, clean, report), train_files)
    job.run(sources, val_files, eval_only)
    splits = job.splits()
    task_meta = task.finish(job.train, job.val, cfg, job.report, eval_only)
    job.report.splits = {name: {k: v for k, v in split.items() if k != "rows" and (k != "examples" or task.layout != "packed")}
                         for name, split in splits.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "layout": task.layout,
        "dtype": dtype.name,
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "settings": settings,
        "sources": {"train": [str(p) for p in train_files], "val": [str(p) for p in val_files],
                    "replay": [str(p) for source in sources if source.rehearsal for p in source.files]},
        "units": task.unit_words,
        "task": task_meta,
        **splits,
        "checksums": {name: file_sha256(directory / name) for name in _token_files(task.layout)},
    }
    _warn(job.report, meta, cfg.block_size, model_params)
    job.report.task = {k: v for k, v in task_meta.items() if k != "coder"}
    job.report.write(directory)
    (directory / PREPARED_META).write_text(json.dumps(meta, indent=2))
    return meta


def prepare_eval_data(paths: list[str], cfg: DataConfig, clean: CleanConfig, tokenizer, cache_root: Path,
                      task: UnitKind | None = None) -> PreparedData:
    """Every unit of `paths` as the validation split: cleaned as for training, but none removed as a duplicate or as
    boilerplate, so that the file is scored as it was given (a test set's repeats count as often as they occur)."""
    eval_cfg = cfg.model_copy(update={"train": paths, "val": []})
    kept = clean.model_copy(update={"dedup_exact": False, "dedup_near": False, "boilerplate": False})
    return prepare_data(eval_cfg, kept, tokenizer, cache_root, eval_only=True, task=task)
