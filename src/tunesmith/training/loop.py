"""The training loop: one function that reads top to bottom; its leaf steps are small helpers."""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from ..config import RunConfig, check_block_size
from ..data import PreparedData, prepare_data
from ..errors import UserError
from ..models import ResolvedModel, context_length, count_parameters, load_model_config, load_tokenizer, resolve_model, tunesmith_home
from ..models.methods import parameter_counts
from .build import build_model, export_final
from .checkpoint import gather_trainable, list_checkpoints, load_checkpoint, save_checkpoint, write_tensors
from .distributed import Distributed, setup_distributed, teardown_distributed, wrap_ddp, wrap_fsdp
from .hardware import pick_device, pick_precision
from .loss import perplexity, validation_loss_with_fallback
from .optim import build_optimizer, build_scheduler
from .plan import StepPlan
from .progress import TrainProgress
from .run_files import MetricsLog, PendingSteps, write_config, write_summary
from .step import StepRunner, largest_micro_batch

WATCHDOG_STEPS = 20


@dataclass
class LoopState:
    """Everything besides tensors that a resumed run needs; saved as state.json in each checkpoint."""

    step: int = 0
    base_val_loss: float = math.nan
    best_val_loss: float = math.inf
    best_step: int = 0
    evals_since_best: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    skipped_steps: int = 0
    bad_in_a_row: int = 0
    rollbacks: int = 0
    first_loss: float | None = None
    high_loss_steps: int = 0
    micro_batch_size: int = 0


class StopSignal:
    """SIGINT/SIGTERM finish the current step, then the loop saves a checkpoint and exits."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _load_inputs(cfg: RunConfig, console: Console) -> tuple[ResolvedModel, object, PreparedData]:
    resolved = resolve_model(cfg.model.name, cfg.model.trust_remote_code, log=console.print)
    model_config = load_model_config(resolved)
    check_block_size(cfg.data.block_size, context_length(model_config))
    tokenizer = load_tokenizer(resolved)
    data = prepare_data(cfg.data, cfg.clean, tokenizer, tunesmith_home(), model_params=count_parameters(model_config))
    for line in data.summary_lines():
        console.print(f"data  {line}", highlight=False)
    return resolved, tokenizer, data


def _watch_loss(state: LoopState, loss: float, factor: float | None) -> None:
    """Abort a run whose training loss stays far above where it started: it is diverging, not learning."""
    if state.first_loss is None:
        state.first_loss = loss
    if factor is None or not math.isfinite(loss):
        return
    state.high_loss_steps = state.high_loss_steps + 1 if loss > factor * state.first_loss else 0
    if state.high_loss_steps >= WATCHDOG_STEPS:
        raise UserError(f"the training loss ({loss:.3f}) has stayed above {factor:g}x its first value ({state.first_loss:.3f}) "
                        f"for {WATCHDOG_STEPS} steps: the run is diverging; lower train.lr or raise train.warmup_steps")


def _record(rows: list[dict], state: LoopState, cfg: RunConfig, log_row) -> bool:
    """Account for flushed steps (skips, the watchdog) and log all but the last, which the caller may add to.

    Returns True when `train.max_bad_steps` non-finite steps came in a row: the caller rolls back.
    """
    for number, row in enumerate(rows):
        skipped = row.get("skipped", False)
        state.skipped_steps += skipped
        state.bad_in_a_row = state.bad_in_a_row + 1 if skipped else 0
        if state.bad_in_a_row >= cfg.train.max_bad_steps:
            log_row(row)
            return True
        _watch_loss(state, row["train_loss"], cfg.train.loss_watchdog)
        if number < len(rows) - 1:
            log_row(row)
    return False


def train_run(cfg: RunConfig, resume: bool = False, console: Console | None = None) -> dict:
    """Fine-tune `cfg.model.name` on `cfg.data`; write the run directory and return summary.json's contents.

    Under torchrun every process runs this; rank 0 alone prints, evaluates and writes files.
    """
    context = setup_distributed(pick_device(cfg.train.device))
    try:
        if not context.is_main:
            console = Console(quiet=True)
        return _train(cfg, resume, console or Console(highlight=False, soft_wrap=True), context)
    finally:
        teardown_distributed(context)


def _train(cfg: RunConfig, resume: bool, console: Console, context: Distributed) -> dict:
    run_dir = cfg.run_dir()
    checkpoints = list_checkpoints(run_dir) if resume else []
    if resume and not checkpoints:
        raise UserError(f"--resume: no checkpoint in {run_dir}; start the run without --resume")
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume or pick another --out")
    context.barrier()  # every rank has seen the run directory as it was before rank 0 writes to it
    torch.manual_seed(cfg.train.seed + context.rank)
    device = context.device(pick_device(cfg.train.device))
    precision = pick_precision(cfg.train.precision, device)

    with context.main_first():
        resolved, tokenizer, data = _load_inputs(cfg, console)
    model = build_model(resolved, cfg.model, device)
    model.train()
    trainable, total_params = parameter_counts(model)
    console.print(f"model {resolved.spec}: {_count(total_params)} parameters, {_count(trainable)} trainable ({cfg.model.method}); "
                  f"{device.type}, {precision}", highlight=False)

    train_blocks, val_blocks = data.blocks("train"), data.blocks("val")
    state = LoopState()
    micro = cfg.train.micro_batch_size
    if micro == "auto":
        micro = largest_micro_batch(model, train_blocks, device, precision, 64, console.print)
    plan = StepPlan(len(train_blocks), micro, cfg.train.grad_accum, cfg.train.epochs, cfg.train.max_steps, cfg.train.seed,
                    context.world_size, context.rank)
    if len(train_blocks) < plan.blocks_per_step and context.enabled:
        raise UserError(f"{len(train_blocks)} training blocks cannot fill one step of {plan.blocks_per_step} blocks across "
                        f"{context.world_size} processes; use fewer processes, a smaller batch or more data")
    sharded = context.enabled and cfg.train.distributed == "fsdp"
    if sharded:
        model = wrap_fsdp(model, device)
    optimizer = build_optimizer(model, cfg.train, device, sharded)
    scheduler = build_scheduler(optimizer, cfg.train, plan.total_steps)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    runner = StepRunner(model, optimizer, scheduler, scaler, device, precision, micro, cfg.train.grad_clip,
                        cfg.train.label_smoothing, console.print, context)
    if context.enabled and not sharded:
        runner.forward_model = wrap_ddp(model, context, device)
    if cfg.train.compile:
        runner.compile()

    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if checkpoints:
        state = LoopState(**load_checkpoint(checkpoints[-1], model, optimizer, scheduler, scaler, context))
        runner.micro_batch_size = state.micro_batch_size or micro
        console.print(f"resumed from {checkpoints[-1]} at step {state.step}", highlight=False)
    metrics = MetricsLog(run_dir / "metrics.jsonl", state.step if checkpoints else None) if context.is_main else None
    eval_batch = cfg.train.eval_batch_size or micro

    def evaluate() -> float:
        """On rank 0, the other ranks waiting for its result; a sharded model needs every rank in its forward."""
        loss = None
        if context.is_main or sharded:
            started = time.perf_counter()
            loss = validation_loss_with_fallback(model, val_blocks, eval_batch, device, precision, cfg.train.eval_max_blocks,
                                                 console.print).loss
            state.eval_seconds += time.perf_counter() - started
        return loss if sharded else context.share(loss)

    def log_row(row: dict) -> None:
        if metrics is not None:
            metrics.write(row)

    def save(step: int) -> None:
        started = time.perf_counter()
        state.micro_batch_size = runner.micro_batch_size
        save_checkpoint(run_dir, step, model, optimizer, scheduler, scaler, asdict(state), cfg.train.keep_last, context)
        state.eval_seconds += time.perf_counter() - started

    def keep_best() -> None:
        started = time.perf_counter()
        tensors = gather_trainable(model) if sharded or context.is_main else None
        if context.is_main:
            (run_dir / "best").mkdir(exist_ok=True)
            write_tensors(tensors, run_dir / "best" / "trainable.safetensors")
        state.eval_seconds += time.perf_counter() - started

    def roll_back() -> None:
        found = list_checkpoints(run_dir)
        if not found:
            raise UserError(f"training diverged: {state.bad_in_a_row} non-finite steps in a row before the first checkpoint; "
                            f"lower train.lr (now {optimizer.param_groups[0]['lr']:.3g})")
        rollbacks = state.rollbacks + 1
        state.__dict__.update(load_checkpoint(found[-1], model, optimizer, scheduler, scaler, context))
        state.rollbacks, state.bad_in_a_row = rollbacks, 0
        scheduler.base_lrs = [lr / 2 for lr in scheduler.base_lrs]
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr / 2
        console.print(f"{cfg.train.max_bad_steps} non-finite steps in a row: rolled back to step {state.step} "
                      f"with the learning rate halved", highlight=False)

    if not checkpoints:
        if context.is_main:
            write_config(run_dir, cfg)
        state.base_val_loss = state.best_val_loss = evaluate()
        console.print(f"base model: validation loss {state.base_val_loss:.4f}, perplexity {perplexity(state.base_val_loss):.2f} "
                      f"({len(val_blocks)} blocks, {val_blocks.num_tokens:,} tokens)", highlight=False)
        keep_best()
        log_row({"step": 0, "epoch": 0.0, "val_loss": state.base_val_loss, "val_ppl": perplexity(state.base_val_loss)})

    save_every = cfg.train.save_every or cfg.train.eval_every
    flush_every = 1 if device.type == "cpu" else cfg.train.log_every  # host syncs cost nothing on a CPU
    progress = TrainProgress(console, plan.total_steps, state.step, cfg.train.log_every)
    pending = PendingSteps()
    stopped_because = plan.ends_by()
    stopping = False
    with StopSignal() as stop:
        try:
            while state.step < plan.total_steps:
                indices = [i for mb in plan.micro_batches(state.step) for i in mb]
                row = {"step": state.step + 1, "epoch": round(plan.epoch_of(state.step + 1), 4), "lr": optimizer.param_groups[0]["lr"]}
                loss, applied = runner.run(train_blocks, indices)
                state.step += 1
                state.tokens_seen += len(indices) * cfg.data.block_size
                pending.add(row, loss, applied, len(indices) * cfg.data.block_size)
                last = state.step == plan.total_steps
                evaluating = state.step % cfg.train.eval_every == 0 or last
                saving = last or state.step % save_every == 0
                if not (evaluating or saving or state.step % flush_every == 0):
                    continue
                rows = pending.flush()
                state.train_seconds += pending.last_elapsed
                if _record(rows, state, cfg, log_row):
                    roll_back()
                    if metrics is not None:
                        metrics.truncate_after(state.step)
                    pending.restart_clock()
                    continue
                if evaluating:
                    val_loss = evaluate()
                    progress.evaluated(perplexity(val_loss))
                    if val_loss < state.best_val_loss:
                        state.best_val_loss, state.best_step, state.evals_since_best = val_loss, state.step, 0
                        keep_best()
                    else:
                        state.evals_since_best += 1
                    rows[-1].update(val_loss=val_loss, val_ppl=perplexity(val_loss))
                log_row(rows[-1])
                progress.step(state.step, rows[-1]["train_loss"], rows[-1]["tokens_per_s"])
                if cfg.train.patience and state.evals_since_best >= cfg.train.patience:
                    stopped_because = "early_stop"
                    progress.message(f"early stop: no improvement in {cfg.train.patience} evaluations; best step {state.best_step}")
                    break
                stopping = context.any(stop.received is not None)
                if stopping or saving:
                    save(state.step)
                if stopping:
                    break
                pending.restart_clock()
        finally:
            progress.close()
    if stopping:
        console.print(f"interrupted at step {state.step}; checkpoint saved. Resume with: tunesmith train --out {run_dir} --resume", highlight=False)
        raise SystemExit(128 + (stop.received or signal.SIGTERM))

    if context.is_main:  # a sharded model is exported from a whole copy built on the CPU
        export_final(build_model(resolved, cfg.model, torch.device("cpu")) if sharded else model, tokenizer, run_dir, resolved, cfg.model)
    summary = {
        "model": cfg.model.name,
        "method": cfg.model.method,
        "base_val_loss": state.base_val_loss,
        "base_val_ppl": perplexity(state.base_val_loss),
        "best_val_loss": state.best_val_loss,
        "best_val_ppl": perplexity(state.best_val_loss),
        "best_step": state.best_step,
        "steps": state.step,
        "epochs": round(plan.epoch_of(state.step), 4),
        "tokens_seen": state.tokens_seen,
        "train_seconds": round(state.train_seconds, 3),
        "eval_seconds": round(state.eval_seconds, 3),
        "tokens_per_s": state.tokens_seen / state.train_seconds if state.train_seconds else 0.0,
        "skipped_steps": state.skipped_steps,
        "rollbacks": state.rollbacks,
        "stopped_because": stopped_because,
        "trainable_parameters": trainable,
        "val_tokens": val_blocks.num_tokens,
        "final_dir": str(run_dir / "final"),
        "device": device.type,
        "precision": precision,
        "micro_batch_size": runner.micro_batch_size,
    }
    if context.is_main:
        write_summary(run_dir, summary)
    context.barrier()
    return summary
