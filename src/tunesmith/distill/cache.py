"""The teacher's top-k log-probabilities (at the run's distillation temperature) at every scored position of the training rows, computed once and stored
beside the token files (`<data>/distill/topk-<key>/`), so that a run, its resumes and later runs with the same teacher,
data and settings train without the teacher's forward pass.

Each training row's positions are those its loss scores (`tasks.loss.scored`), in order; a batch of rows is the rows'
positions one after the other, as the loss reads them. meta.json, written last, holds the arrays' checksums: a cache
that does not match them is computed again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..rundir.durable import fsync_tree, own_partial
from ..rundir.fingerprint import file_sha256
from ..runtime import autocast
from ..tasks.loss import scored

ARRAYS = ("ids", "logprobs", "offsets")
COMPUTE_ROWS = 8  # training rows per teacher forward while computing


def cache_key(teacher_identity: list, data_dir: Path, settings: dict) -> str:
    identity = json.dumps({"teacher": teacher_identity, "data": str(Path(data_dir).resolve()), **settings}, sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


class TopkRows:
    """The cached top-k of each training row, read from memory-mapped arrays."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.ids = np.load(folder / "ids.npy", mmap_mode="r")
        self.logprobs = np.load(folder / "logprobs.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")

    def of(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        spans = [(self.offsets[i], self.offsets[i + 1]) for i in indices]
        ids = np.concatenate([self.ids[a:b] for a, b in spans])
        logprobs = np.concatenate([self.logprobs[a:b] for a, b in spans])
        return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(logprobs.astype(np.float32))


class WithTeacherTopk:
    """The training dataset, each batch carrying the teacher's cached top-k at its scored positions."""

    def __init__(self, dataset, rows: TopkRows):
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def batch(self, indices: list[int]):
        ids, logprobs = self.rows.of(indices)
        return replace(self.dataset.batch(indices), teacher_ids=ids, teacher_logprobs=logprobs)


def _valid(folder: Path, rows: int) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("rows") != rows:
            return False
        return all(file_sha256(folder / f"{name}.npy") == meta["sha256"][name] for name in ARRAYS)
    except (OSError, ValueError, KeyError, TypeError):
        return False


@torch.no_grad()
def _compute(teacher_logits, dataset, k: int, vocab: int, temperature: float, device: torch.device, precision: str) -> dict[str, np.ndarray]:
    ids_parts, logprob_parts, counts = [], [], []
    for start in range(0, len(dataset), COMPUTE_ROWS):
        indices = list(range(start, min(start + COMPUTE_ROWS, len(dataset))))
        batch = dataset.batch(indices).to(device)
        with autocast(device, precision):
            logits = teacher_logits(batch)
        for row in range(len(indices)):  # each row's positions alone, so that their count is the row's
            picked, _, _ = scored(logits[row : row + 1], _row(batch, row))
            top = torch.log_softmax(picked[..., :vocab].float() / temperature, -1).topk(min(k, vocab), -1)
            ids_parts.append(top.indices.to(torch.int32).cpu().numpy())
            logprob_parts.append(top.values.cpu().numpy())  # fp32: the rest's mass is 1 minus their sum
            counts.append(len(picked))
    return {"ids": np.concatenate(ids_parts) if ids_parts else np.zeros((0, k), np.int32),
            "logprobs": np.concatenate(logprob_parts) if logprob_parts else np.zeros((0, k), np.float32),
            "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)}


def _store(arrays: dict[str, np.ndarray], rows: int, k: int, folder: Path) -> None:
    """The arrays and their meta.json in a folder of this process's, renamed into place whole; a damaged cache it
    replaces is removed first, and one another process put there meanwhile is kept."""
    partial = own_partial(folder)
    try:
        partial.mkdir(parents=True)
        for name, array in arrays.items():
            np.save(partial / f"{name}.npy", array)
        meta = {"rows": rows, "positions": int(arrays["offsets"][-1]), "k": k,
                "sha256": {name: file_sha256(partial / f"{name}.npy") for name in ARRAYS}}
        (partial / "meta.json").write_text(json.dumps(meta, indent=2))
        fsync_tree(partial)
        if folder.is_symlink():  # a link put in its place is replaced, never written through
            folder.unlink()
        elif folder.exists() and not _valid(folder, rows):
            shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            partial.rename(folder)
    except OSError:
        if not _valid(folder, rows):
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _row(batch, row: int):
    """Row `row` of a batch, as a batch of one."""
    def one(value):
        return value[row : row + 1] if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch.size else value

    return replace(batch, **{name: one(value) for name, value in batch.__dict__.items()})


def teacher_topk(teacher_logits, dataset, k: int, vocab: int, temperature: float, folder: Path, device: torch.device,
                 precision: str, log=print) -> TopkRows | None:
    """The cached top-k for `dataset`'s rows in `folder`: read when whole, else computed and stored. None when it cannot be
    stored (a full disk): the run then trains with the teacher beside the student, as without the cache."""
    if _valid(folder, len(dataset)):
        log(f"distill.cache: the teacher's top-{k} log-probabilities read from {folder}")
        return TopkRows(folder)
    log(f"distill.cache: computing the teacher's top-{k} log-probabilities once, for {len(dataset):,} training rows")
    arrays = _compute(teacher_logits, dataset, k, vocab, temperature, device, precision)
    try:
        _store(arrays, len(dataset), k, folder)
    except OSError as exc:
        log(f"distill.cache: cannot store the teacher's top-k in {folder} ({exc.strerror or exc}); "
            "training with the teacher beside the student instead")
        return None
    log(f"distill.cache: {int(arrays['offsets'][-1]):,} positions x {arrays['ids'].shape[1]} stored in {folder} ({_size(folder)})")
    return TopkRows(folder)


def _size(folder: Path) -> str:
    total = sum(p.stat().st_size for p in folder.iterdir())
    return f"{total / 2**20:.1f} MiB"


__all__ = ["TopkRows", "WithTeacherTopk", "cache_key", "teacher_topk"]
