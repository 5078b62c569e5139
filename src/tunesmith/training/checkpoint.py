"""Resumable checkpoints and Hugging Face model directories, written so that a crash never leaves one half-written.

Everything is written into a `.partial` directory, synced, and renamed into place (see `durable`), so the
latest complete checkpoint is always readable. Reading one back checks every file before any of it is used,
and loads tensors and plain values only: `torch.load(weights_only=True)` and safetensors run no code.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..models.weights import load_trainable_state, trainable_state
from ..rundir.durable import as_os_error, fresh_partial, fsync_path, replace_dir
from .distributed import Distributed, is_sharded
from .state import LoopState

CHECKPOINTS = "checkpoints"


class DamagedCheckpoint(Exception):
    """A checkpoint file that is missing, truncated or unreadable; an older checkpoint may still be intact."""


def rng_states() -> dict:
    """Every generator's state as tensors and numbers, which a weights-only load accepts."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    states = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)), "pos": numpy_state["state"]["pos"],
                  "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = states["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
                         "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _full_state_options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def gather_trainable(model) -> dict[str, torch.Tensor] | None:
    """The trainable parameters whole; with FSDP every rank must call this, and rank 0 gets the tensors."""
    if not is_sharded(model):
        return {name: t.contiguous() for name, t in trainable_state(model).items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    names = set(trainable_state(model))
    full = get_model_state_dict(model, options=_full_state_options())
    return {name: t.contiguous() for name, t in full.items() if name in names} or None


def gather_optimizer(model, optimizer) -> dict:
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_state_options())


def _disk_full(target: Path, exc: OSError) -> UserError:
    run_dir = target.parents[1]
    free = shutil.disk_usage(run_dir if run_dir.exists() else Path.cwd()).free
    earlier = list_checkpoints(run_dir)
    then = (f"{earlier[-1].name} is intact: free some space, then continue with --resume" if earlier else
            "no earlier checkpoint: free some space, then start the run again")
    return UserError(f"cannot write checkpoint {target}: {exc.strerror or exc} ({free / 2**20:,.0f} MB free on that disk); {then}")


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, scaler, state: dict, keep_last: int,
                    context: Distributed = Distributed()) -> Path:
    """Trainable weights, optimizer, scheduler, loss scaler, each rank's RNG states and the loop's own state.

    Frozen weights are not saved: a resumed run reloads them from the base model, so a LoRA
    checkpoint is megabytes, not the whole model. Rank 0 writes everything but the other ranks' RNG.
    A full disk removes the half-written copy and leaves the earlier checkpoints as they were.
    """
    target = run_dir / CHECKPOINTS / f"step-{step:07d}"
    partial = target.with_name(target.name + ".partial")
    try:
        if context.is_main:
            fresh_partial(target)
        context.barrier()
        save_plain(rng_states(), partial / f"rng-rank{context.rank}.pt")
        context.barrier()
        tensors, optimizer_state = gather_trainable(model), gather_optimizer(model, optimizer)
        if context.is_main:
            save_file(tensors, str(partial / "trainable.safetensors"))
            save_plain({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None}, partial / "training_state.pt")
            (partial / "state.json").write_text(json.dumps(state, separators=(",", ":")))  # one line: it holds the probe's token ids
            replace_dir(partial, target)
            for stale in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(stale, ignore_errors=True)
    except (OSError, SafetensorError, RuntimeError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if as_os_error(exc) is None:
            raise
        raise _disk_full(target, as_os_error(exc)) from None
    context.barrier()
    return target


def save_plain(value, path: Path) -> None:
    """torch.save through a Python file, so that a full disk surfaces as the file's OSError (see `as_os_error`)."""
    with path.open("wb") as handle:
        torch.save(value, handle)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a `.partial` or set-aside `.damaged` one has a dot in its name)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and "." not in p.name]
    return sorted(p for p in done if (p / "state.json").is_file())


def _load_plain(path: Path):
    """A .pt file of tensors and plain values; anything that would need code to rebuild is refused."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{path.name} is missing") from None
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise UserError(f"{path}: holds Python objects, not only tensors and numbers; tunesmith never runs code from a "
                            "checkpoint, so it is refused (delete that checkpoint if you did not write it)") from None
        raise DamagedCheckpoint(f"{path.name} is unreadable") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise DamagedCheckpoint(f"{path.name} is truncated or unreadable ({str(exc).splitlines()[0][:80]})") from None


@dataclass
class SavedCheckpoint:
    """A checkpoint read whole into memory and checked, before any of it touches the model."""

    path: Path
    state: dict
    tensors: dict
    training: dict
    rng: dict | None


def read_checkpoint(path: Path, rank: int = 0) -> SavedCheckpoint:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedCheckpoint("state.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DamagedCheckpoint("state.json is truncated or not JSON") from None
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
    except FileNotFoundError:
        raise DamagedCheckpoint("trainable.safetensors is missing") from None
    except SafetensorError as exc:
        raise DamagedCheckpoint(f"trainable.safetensors is truncated or unreadable ({exc})") from None
    training = _load_plain(path / "training_state.pt")
    if not isinstance(state, dict) or not isinstance(training, dict) or "optimizer" not in training:
        raise DamagedCheckpoint("its state is not what tunesmith writes")
    problem = LoopState.problem_in(state)
    if problem:
        raise DamagedCheckpoint(f"state.json is not what tunesmith writes ({problem})")
    if not (path / "rng-rank0.pt").is_file():  # every run had a first process (a later rank may be new to the run); every
        raise DamagedCheckpoint("rng-rank0.pt is missing")  # rank looks at the same file, so all fall back to the same checkpoint
    rng = path / f"rng-rank{rank}.pt"
    return SavedCheckpoint(path, state, tensors, training, _load_plain(rng) if rng.is_file() else None)


def newest_intact_checkpoint(run_dir: Path, rank: int = 0, log=print) -> tuple[SavedCheckpoint | None, list[Path]]:
    """The newest checkpoint that reads back whole, and the damaged ones newer than it (to be set aside)."""
    damaged: list[Path] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return read_checkpoint(path, rank), damaged
        except DamagedCheckpoint as exc:
            log(f"checkpoint {path} is damaged: {exc}; falling back to the one before")
            damaged.append(path)
    return None, damaged


def set_aside(damaged: list[Path]) -> None:
    """Rename damaged checkpoints to `<name>.damaged`: kept for inspection, never resumed from or counted again."""
    for path in damaged:
        aside = path.with_name(path.name + ".damaged")
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
    if damaged:
        fsync_path(damaged[0].parent)


def apply_checkpoint(saved: SavedCheckpoint, model, optimizer, scheduler, scaler) -> dict:
    """Put a read checkpoint into the model, optimizer, scheduler and scaler; returns the loop's saved state."""
    try:
        load_trainable(model, saved.tensors)
    except ValueError as exc:
        raise UserError(f"{saved.path} does not fit this model ({exc}); resume with the run's own config.yaml, or move that "
                        "checkpoint aside to resume from the one before") from None
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, saved.training["optimizer"], options=_full_state_options())
    else:
        optimizer.load_state_dict(saved.training["optimizer"])
    scheduler.load_state_dict(saved.training["scheduler"])
    if scaler is not None and saved.training["scaler"] is not None:
        scaler.load_state_dict(saved.training["scaler"])
    if saved.rng is not None:  # absent when resuming with more processes than the run had
        restore_rng_states(saved.rng)
    return saved.state


def check_restored_settings(saved: SavedCheckpoint, optimizer, scheduler) -> None:
    """On resume: the checkpoint's optimizer and schedule keep the settings the run started with, so another train.lr,
    weight_decay or betas (an edited config.yaml) would be silently ignored; they are refused."""
    groups = saved.training["optimizer"].get("param_groups") if isinstance(saved.training.get("optimizer"), dict) else None
    for before_group, group in zip(groups if isinstance(groups, list) else [], optimizer.param_groups):
        for key in ("weight_decay", "betas"):
            before, now = before_group.get(key) if isinstance(before_group, dict) else None, group.get(key)
            if before is not None and now is not None and not _close(before, now):
                raise UserError(f"--resume: train.{key} is {_shown(now)} here but {_shown(before)} in the optimizer state "
                                f"{saved.path} restores, so a new value would be ignored: set it back to {_shown(before)} "
                                "in the run's config.yaml, or start a new run with another --out")
    _check_learning_rates(saved, scheduler)


def _close(before, now) -> bool:
    pairs = list(zip(before, now)) if isinstance(before, (list, tuple)) and isinstance(now, (list, tuple)) else [(before, now)]
    return all(isinstance(b, (int, float)) and math.isclose(b, float(n), rel_tol=1e-6, abs_tol=1e-12) for b, n in pairs)


def _shown(value) -> str:
    return f"[{', '.join(f'{v:g}' for v in value)}]" if isinstance(value, (list, tuple)) else f"{value:g}"


def _check_learning_rates(saved: SavedCheckpoint, scheduler) -> None:
    """The schedule keeps the rates the run started with, halved once per roll-back."""
    before = saved.training["scheduler"].get("base_lrs") if isinstance(saved.training.get("scheduler"), dict) else None
    now = list(scheduler.base_lrs)
    halvings = range(int(saved.state.get("rollbacks") or 0) + 1)
    if isinstance(before, list) and len(before) == len(now) and not any(
            all(isinstance(b, (int, float)) and math.isclose(b, n * 0.5**k, rel_tol=1e-6) for b, n in zip(before, now))
            for k in halvings):
        started = before[0] * 2 ** (len(halvings) - 1)
        raise UserError(f"--resume: train.lr is {now[0]:g} here but the run that saved {saved.path} started at {started:g}; "
                        "the checkpoint restores the learning-rate schedule, so a run cannot change it midway: set train.lr "
                        f"back to {started:g} in the run's config.yaml, or start a new run with another --out")


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file written beside `path`, synced and renamed over it; a full disk raises OSError."""
    partial = path.with_name(path.name + ".partial")
    try:
        save_file(tensors, str(partial))
        fsync_path(partial)
        partial.replace(path)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        os_error = as_os_error(exc)
        if os_error is not None and os_error is not exc:
            raise OSError(os_error.errno, os_error.strerror, str(path)) from None
        raise
    fsync_path(path.parent)


def load_trainable(model, source: Path | dict[str, torch.Tensor]) -> None:
    """Trainable weights from a safetensors file (or tensors already read) into the model."""
    state = load_file(str(source)) if isinstance(source, Path) else source
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state, options=_full_state_options(strict=False))
    else:
        load_trainable_state(model, state)


def save_hf_model(model, tokenizer, target: Path) -> None:
    """A plain Hugging Face directory (safetensors, config, tokenizer, generation config)."""
    partial = fresh_partial(target)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    replace_dir(partial, target)
