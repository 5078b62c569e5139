"""Before a run on a CPU: refuse a plan larger than the memory available now, and say what would fit.

On a GPU running out of memory is an exception that training backs off from; on a CPU the kernel kills
the process, with no message and nothing saved. So a CPU run first sets `recommend`'s plan for its model,
method and micro-batch (see `memory`, resident memory included) against psutil's available memory.
Small models never pay for the simulation: a closed-form bound of their peak that fits settles it.
`train.memory_check: false` skips the check.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

from ..config import RunConfig, check_block_size
from ..errors import UserError
from ..methods import METHODS, method_of
from .memory import MemoryModel, StepShape, as_resident, fit_memory, frozen_copy_bytes

OVERRIDE = "train.memory_check=false"


def available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


def peak_bound(config, shape: StepShape, sequences: int) -> float:
    """A generous closed-form upper bound of a run's resident peak (every parameter trained with AdamW in fp32, fp32
    activations of an unfused attention and output layer, about thrice what they take): when it fits, there is no need
    to simulate."""
    from ..models import count_parameters

    hidden = config.hidden_size
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    tokens = sequences * shape.block_size
    per_layer = 4 * tokens * (34 * hidden + 8 * inner + 5 * config.num_attention_heads * shape.block_size)
    logits = 4 * 4 * tokens * config.vocab_size
    return 16 * count_parameters(config) + config.num_hidden_layers * per_layer + logits + 2 * 2**30


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


def _what_fits(config, shape: StepShape, memory: MemoryModel, micro: int, rows: int, accum: int, available: int,
               fewer_rows=lambda _rows: None) -> str:
    """The run's own method at a smaller micro-batch (the batch kept by accumulating), else fewer rows per example where
    the task has a setting for it (`fewer_rows`: the setting for a count, or None), else a cheaper method, else a smaller
    model."""
    fits = memory.largest_micro_batch(available, micro * rows) // rows
    batch = accum * micro
    fits = max((size for size in range(1, fits + 1) if batch % size == 0), default=0)  # the batch kept exactly
    if fits:
        return (f"train.micro_batch_size={fits} with train.grad_accum={batch // fits} "
                f"({_gib(memory.estimate(fits * rows).total)})")
    group = memory.largest_micro_batch(available, rows) if rows > 1 else 0
    if group and fewer_rows(group):
        return f"{fewer_rows(group)} at micro-batch 1 ({_gib(memory.estimate(group).total)})"
    from dataclasses import replace

    for method in [m.name for m in METHODS.values() if m.fallback and m.name != shape.method]:
        cheaper = replace(shape, method=method, train_last_layers=None)
        other = as_resident(fit_memory(config, cheaper))
        fits = other.largest_micro_batch(available, micro * rows) // rows
        if fits:
            return f"model.method={method} at micro-batch {fits} ({_gib(other.estimate(fits * rows).total)})"
    return "a smaller model (tunesmith recommend --data FILE lists those that fit)"


def check_memory_fits(cfg: RunConfig, log: Callable[[str], None] = lambda _m: None) -> None:
    """Raise a UserError (one line: the plan, the memory available, what fits) when a CPU run would not fit in memory."""
    import torch

    from ..distill.student import student_config
    from ..distill.teacher import resolve_teacher
    from ..models import count_parameters, load_model_config, resolve_model
    from ..runtime import pick_device, pick_precision

    if not cfg.train.memory_check or os.environ.get("WORLD_SIZE", "1") != "1" or not method_of(cfg.model.method).runs_on("cpu"):
        return  # processes under torchrun share the memory in ways not modelled here; qlora stops on a CPU anyway
    if pick_device(cfg.train.device).type != "cpu":
        return
    held_bytes = 0
    if cfg.distill.teacher:  # the frozen teacher's weights stay beside the student's, in the compute dtype
        teacher = load_model_config(resolve_teacher(cfg.distill.teacher, cfg.model.trust_remote_code, log=log))
        held_bytes = count_parameters(teacher) * (2 if pick_precision(cfg.train.precision, torch.device("cpu")) != "fp32" else 4)
    if cfg.distill.student is not None and cfg.distill.teacher:  # without a teacher the task's check refuses the config
        cut = cfg.distill.student.from_teacher
        config = student_config(teacher, cut.keep_layers, cut.pick)
    else:
        config = load_model_config(resolve_model(cfg.model.name, cfg.model.trust_remote_code, log=log))
    held_bytes += frozen_copy_bytes(cfg, count_parameters(config))
    check_plan_fits(cfg, config, log, held_bytes)


def check_plan_fits(cfg: RunConfig, config, log: Callable[[str], None] = lambda _m: None, resident_bytes: int = 0) -> None:
    """`check_memory_fits` for a CPU run of the model whose config is `config`, beside `resident_bytes` held already
    (a distillation teacher's weights, a frozen reference)."""
    import torch

    from ..models import context_length
    from ..models.weights import short_count
    from ..runtime import pick_precision
    from ..tasks import task_kind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # training warns about the same settings itself
        precision = pick_precision(cfg.train.precision, torch.device("cpu"))
    kind = task_kind(cfg)
    micro = cfg.train.micro_batch_size if isinstance(cfg.train.micro_batch_size, int) else 1  # auto starts from 1
    rows = kind.example_rows(cfg)
    shape = StepShape(cfg.model.method, cfg.data.block_size, precision, kind.head_classes(cfg, 2), cfg.model.gradient_checkpointing,
                      cfg.model.lora_rank, cfg.train.weights, method_of(cfg.model.method).trained_layers(cfg.model, config))
    available = available_memory() - resident_bytes
    try:
        if peak_bound(config, shape, micro * rows) <= available:
            return
        check_block_size(cfg.data.block_size, context_length(config))  # past the context, the memory asked for is not the problem
        log(f"memory: checking that {cfg.model.name} ({cfg.model.method}) fits in the {_gib(available)} available ...")
        memory = as_resident(fit_memory(config, shape))
    except UserError:
        raise
    except Exception as exc:  # an architecture the simulation cannot run must not stop a run that may well work
        log(f"memory: not checked ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return
    needed = memory.estimate(micro * rows).total
    if needed <= available:
        return
    batch = f"micro-batch {micro} x {rows} rows of {cfg.data.block_size} tokens" if rows > 1 else \
        f"micro-batch {micro} x {cfg.data.block_size} tokens"
    free = f"{_gib(available)} is available" if not resident_bytes else \
        f"{_gib(max(available, 0))} is available beside the {_gib(resident_bytes)} of weights held with it (a teacher or a frozen reference)"
    fits = _what_fits(config, shape, memory, micro, rows, cfg.train.grad_accum, available, kind.fewer_rows) if available > 0 else \
        "model.method=lora where the weights held are a frozen reference (LoRA holds none), else a smaller model"
    raise UserError(f"this run needs about {_gib(needed)} of memory ({cfg.model.method}, {short_count(memory.params)} parameters, "
                    f"{batch}, {precision}) and {free}: on a CPU the kernel would kill it; what fits: {fits}; "
                    f"or --set {OVERRIDE} to start anyway")
