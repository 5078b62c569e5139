"""Resumable checkpoints and Hugging Face model directories, written so that a crash never leaves one half-written.

Everything is written into a `.partial` directory and renamed into place; a rename is atomic on
POSIX file systems, so the latest complete checkpoint is always readable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..models.methods import load_trainable_state, trainable_state
from .distributed import Distributed, is_sharded

CHECKPOINTS = "checkpoints"


def _replace_dir(partial: Path, target: Path) -> None:
    old = target.with_name(target.name + ".old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _fresh_partial(target: Path) -> Path:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
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


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, scaler, state: dict, keep_last: int,
                    context: Distributed = Distributed()) -> Path:
    """Trainable weights, optimizer, scheduler, loss scaler, each rank's RNG states and the loop's own state.

    Frozen weights are not saved: a resumed run reloads them from the base model, so a LoRA
    checkpoint is megabytes, not the whole model. Rank 0 writes everything but the other ranks' RNG.
    """
    target = run_dir / CHECKPOINTS / f"step-{step:07d}"
    partial = target.with_name(target.name + ".partial")
    if context.is_main:
        _fresh_partial(target)
    context.barrier()
    torch.save(rng_states(), partial / f"rng-rank{context.rank}.pt")
    context.barrier()
    tensors, optimizer_state = gather_trainable(model), gather_optimizer(model, optimizer)
    if context.is_main:
        write_tensors(tensors, partial / "trainable.safetensors")
        torch.save(
            {
                "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
            },
            partial / "training_state.pt",
        )
        (partial / "state.json").write_text(json.dumps(state, indent=2))
        _replace_dir(partial, target)
        for stale in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    context.barrier()
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and "." not in p.name]
    return sorted(p for p in done if (p / "state.json").is_file())


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler, context: Distributed = Distributed()) -> dict:
    load_trainable(model, path / "trainable.safetensors")
    saved = torch.load(path / "training_state.pt", weights_only=False)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, saved["optimizer"], options=_full_state_options())
    else:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if scaler is not None and saved["scaler"] is not None:
        scaler.load_state_dict(saved["scaler"])
    rng = path / f"rng-rank{context.rank}.pt"
    if rng.is_file():  # absent when resuming with more processes than the run had
        restore_rng_states(torch.load(rng, weights_only=False))
    return json.loads((path / "state.json").read_text())


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial))
    partial.replace(path)


def save_trainable(model, path: Path) -> None:
    write_tensors(gather_trainable(model), path)


def load_trainable(model, path: Path) -> None:
    state = load_file(str(path))
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state, options=_full_state_options(strict=False))
    else:
        load_trainable_state(model, state)


def save_hf_model(model, tokenizer, target: Path) -> None:
    """A plain Hugging Face directory (safetensors, config, tokenizer, generation config)."""
    partial = _fresh_partial(target)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    _replace_dir(partial, target)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def copy_dir(source: Path, target: Path) -> None:
    """Hard links where the file system allows: `final/` costs no extra disk beside `best/`.

    Safe because model directories are never modified in place, only replaced whole.
    """
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, copy_function=_link_or_copy)
    _replace_dir(partial, target)
