"""The `prepare` step: documents in, token files and meta.json out, cached by content, tokenizer and settings."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from ..config import DataConfig
from ..errors import UserError
from .blocks import TokenBlocks
from .clean import clean_documents
from .read import ReadOptions, expand_paths, read_documents
from .split import split_documents
from .tokens import token_dtype, tokenize_to_file, tokenizer_fingerprint

FORMAT_VERSION = 1


@dataclass
class PreparedData:
    directory: Path
    meta: dict
    from_cache: bool

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def blocks(self, split: str, block_size: int | None = None) -> TokenBlocks:
        size = block_size or self.meta["settings"]["block_size"]
        return TokenBlocks(self.directory / f"{split}.bin", self.dtype, size, keep_tail=(split == "val"))

    def summary_lines(self) -> list[str]:
        counts = self.meta["documents"]
        drops = ", ".join(f"{n} {reason.removeprefix('dropped_').replace('_', ' ')}" for reason, n in counts.items() if reason.startswith("dropped_") and n)
        lines = [
            f"documents: {counts['read']} read, {counts['kept']} kept, {counts['read'] - counts['kept']} dropped" + (f" ({drops})" if drops else ""),
            f"split: {self.meta['train']['documents']} train / {self.meta['val']['documents']} validation documents",
            f"tokens: {self.meta['train']['tokens']:,} train / {self.meta['val']['tokens']:,} validation "
            f"({self.meta['val']['blocks']} validation blocks of up to {self.meta['settings']['block_size']})",
        ]
        if self.from_cache:
            lines.append(f"cached: {self.directory} (unchanged inputs, tokenizer and settings)")
        return lines


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_key(train_files: list[Path], val_files: list[Path], tokenizer_id: str, settings: dict) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION}|{tokenizer_id}|{json.dumps(settings, sort_keys=True)}".encode())
    for role, files in (("train", train_files), ("val", val_files)):
        for path in files:
            digest.update(f"|{role}|{path.name}|{_file_digest(path)}".encode())
    return digest.hexdigest()[:20]


def _read_clean(files: list[Path], options: ReadOptions, counts: Counter) -> list[str]:
    return list(clean_documents(read_documents(files, options), counts))


def _check_sizes(train_tokens: int, val_tokens: int, block_size: int, eval_only: bool) -> None:
    if val_tokens < 2:
        what = "the data" if eval_only else "the validation split"
        raise UserError(f"{what} has {val_tokens} tokens; at least 2 are needed to measure perplexity: add text or pass a larger data.val file")
    if not eval_only and train_tokens < block_size:
        raise UserError(
            f"the training split has {train_tokens} tokens, fewer than one block of {block_size}; "
            f"add more text or lower data.block_size to at most {max(8, train_tokens)}"
        )


def prepare_data(
    cfg: DataConfig,
    tokenizer,
    cache_root: Path,
    eval_only: bool = False,
) -> PreparedData:
    """Read, clean, split, tokenize and pack `cfg.train` (and `cfg.val`); reuse the cache when nothing changed.

    With `eval_only`, every document of `cfg.train` goes to the validation split (for `tunesmith eval`).
    """
    if not cfg.train:
        raise UserError("data.train: no training data given; pass --data FILE (or a folder or glob)")
    train_files = expand_paths(cfg.train, "data.train")
    val_files = expand_paths(cfg.val, "data.val") if cfg.val and not eval_only else []
    settings = {
        "block_size": cfg.block_size,
        "val_fraction": cfg.val_fraction,
        "text_field": cfg.text_field,
        "txt_documents": cfg.txt_documents,
        "eval_only": eval_only,
    }
    key = _cache_key(train_files, val_files, tokenizer_fingerprint(tokenizer), settings)
    directory = cache_root / "data" / key
    if (directory / "meta.json").is_file():
        meta = json.loads((directory / "meta.json").read_text())
        return PreparedData(directory, meta, from_cache=True)

    options = ReadOptions(text_field=cfg.text_field, txt_documents=cfg.txt_documents)
    counts: Counter = Counter(read=0, kept=0, dropped_empty=0, dropped_duplicate=0, dropped_missing_field=0)
    docs = _read_clean(train_files, options, counts)
    if eval_only:
        train_docs, val_docs = [], docs
    elif val_files:
        val_counts: Counter = Counter()
        train_docs, val_docs = docs, _read_clean(val_files, options, val_counts)
        counts["val_file_documents"] = val_counts["kept"]
    else:
        train_docs, val_docs = split_documents(docs, cfg.val_fraction)

    partial = directory.with_name(f"{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    dtype = token_dtype(len(tokenizer))
    train_tokens = tokenize_to_file(train_docs, tokenizer, partial / "train.bin", dtype)
    val_tokens = tokenize_to_file(val_docs, tokenizer, partial / "val.bin", dtype)
    try:
        _check_sizes(train_tokens, val_tokens, cfg.block_size, eval_only)
    except UserError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    val_blocks = TokenBlocks(partial / "val.bin", dtype, cfg.block_size, keep_tail=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "settings": settings,
        "sources": {"train": [str(p) for p in train_files], "val": [str(p) for p in val_files]},
        "documents": dict(counts),
        "train": {"documents": len(train_docs), "tokens": train_tokens, "blocks": train_tokens // cfg.block_size},
        "val": {"documents": len(val_docs), "tokens": val_tokens, "blocks": len(val_blocks)},
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        partial.rename(directory)
    except OSError:  # the same data was prepared concurrently
        shutil.rmtree(partial, ignore_errors=True)
    return PreparedData(directory, meta, from_cache=False)


def prepare_eval_data(paths: list[str], cfg: DataConfig, tokenizer, cache_root: Path) -> PreparedData:
    eval_cfg = cfg.model_copy(update={"train": paths, "val": []})
    return prepare_data(eval_cfg, tokenizer, cache_root, eval_only=True)
