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
from ..models import ResolvedModel, context_length, count_parameters, load_model, load_model_config, load_tokenizer, resolve_model, tunesmith_home
from .checkpoint import copy_dir, list_checkpoints, load_checkpoint, save_checkpoint, save_hf_model
from .hardware import autocast, pick_device, pick_precision
from .loss import next_token_loss, perplexity, validation_loss
from .methods import apply_method
from .optim import build_optimizer, build_scheduler
from .plan import StepPlan
from .progress import TrainProgress
from .run_files import MetricsLog, write_config, write_summary


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


def _train_step(model, optimizer, scheduler, scaler, blocks, micro_batches, device, precision, grad_clip) -> tuple[torch.Tensor, bool]:
    """One optimizer step over `micro_batches`; returns the mean loss and whether the update was applied."""
    blocks_in_step = sum(len(mb) for mb in micro_batches)
    total = torch.zeros((), device=device)
    for indices in micro_batches:
        tokens = blocks.batch(indices).to(device, non_blocking=True)  # (B, T)
        with autocast(device, precision):
            loss = next_token_loss(model, tokens) * (len(indices) / blocks_in_step)
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach()
    if scaler:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf)
    finite = bool(torch.isfinite(total) and torch.isfinite(grad_norm))
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    elif finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return total, finite


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


def train_run(cfg: RunConfig, resume: bool = False, console: Console | None = None) -> dict:
    """Fine-tune `cfg.model.name` on `cfg.data`; write the run directory and return summary.json's contents."""
    console = console or Console(highlight=False, soft_wrap=True)
    run_dir = cfg.run_dir()
    checkpoints = list_checkpoints(run_dir) if resume else []
    if resume and not checkpoints:
        raise UserError(f"--resume: no checkpoint in {run_dir}; start the run without --resume")
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume or pick another --out")
    torch.manual_seed(cfg.train.seed)
    device = pick_device(cfg.train.device)
    precision = pick_precision(cfg.train.precision, device)

    resolved, tokenizer, data = _load_inputs(cfg, console)
    model = load_model(resolved)
    trainable, total_params = apply_method(model, cfg.model)
    console.print(f"model {resolved.spec}: {_count(total_params)} parameters, {_count(trainable)} trainable ({cfg.model.method}); "
                  f"{device.type}, {precision}", highlight=False)
    model.to(device)
    model.train()

    train_blocks, val_blocks = data.blocks("train"), data.blocks("val")
    plan = StepPlan(len(train_blocks), cfg.train.micro_batch_size, cfg.train.grad_accum, cfg.train.epochs, cfg.train.max_steps, cfg.train.seed)
    optimizer = build_optimizer(model, cfg.train, device)
    scheduler = build_scheduler(optimizer, cfg.train, plan.total_steps)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    run_dir.mkdir(parents=True, exist_ok=True)
    state = LoopState()
    if checkpoints:
        state = LoopState(**load_checkpoint(checkpoints[-1], model, optimizer, scheduler, scaler))
        console.print(f"resumed from {checkpoints[-1]} at step {state.step}", highlight=False)
    metrics = MetricsLog(run_dir / "metrics.jsonl", state.step if checkpoints else None)

    def evaluate() -> float:
        started = time.perf_counter()
        result = validation_loss(model, val_blocks, cfg.train.micro_batch_size, device, precision, cfg.train.eval_max_blocks)
        state.eval_seconds += time.perf_counter() - started
        return result.loss

    def save(step: int) -> None:
        started = time.perf_counter()
        save_checkpoint(run_dir, step, model, optimizer, scheduler, scaler, asdict(state), cfg.train.keep_last)
        state.eval_seconds += time.perf_counter() - started

    if not checkpoints:
        write_config(run_dir, cfg)
        state.base_val_loss = state.best_val_loss = evaluate()
        console.print(f"base model: validation loss {state.base_val_loss:.4f}, perplexity {perplexity(state.base_val_loss):.2f} "
                      f"({len(val_blocks)} blocks, {val_blocks.num_tokens:,} tokens)", highlight=False)
        save_hf_model(model, tokenizer, run_dir / "best")
        metrics.write({"step": 0, "epoch": 0.0, "val_loss": state.base_val_loss, "val_ppl": perplexity(state.base_val_loss)})

    tokens_per_step = plan.blocks_per_step * cfg.data.block_size
    save_every = cfg.train.save_every or cfg.train.eval_every
    progress = TrainProgress(console, plan.total_steps, state.step, cfg.train.log_every)
    stopped_because = plan.ends_by()
    with StopSignal() as stop:
        try:
            while state.step < plan.total_steps:
                micro_batches = plan.micro_batches(state.step)
                lr = optimizer.param_groups[0]["lr"]
                started = time.perf_counter()
                loss, applied = _train_step(model, optimizer, scheduler, scaler, train_blocks, micro_batches, device, precision, cfg.train.grad_clip)
                loss_value = loss.item()  # one host sync per step, for the log line
                elapsed = time.perf_counter() - started
                step_tokens = sum(len(mb) for mb in micro_batches) * cfg.data.block_size
                state.step += 1
                state.train_seconds += elapsed
                state.tokens_seen += step_tokens
                state.skipped_steps += 0 if applied else 1
                row = {"step": state.step, "epoch": round(plan.epoch_of(state.step), 4), "train_loss": loss_value,
                       "lr": lr, "tokens_per_s": step_tokens / elapsed}
                last = state.step == plan.total_steps
                if state.step % cfg.train.eval_every == 0 or last:
                    val_loss = evaluate()
                    row.update(val_loss=val_loss, val_ppl=perplexity(val_loss))
                    progress.evaluated(perplexity(val_loss))
                    if val_loss < state.best_val_loss:
                        state.best_val_loss, state.best_step, state.evals_since_best = val_loss, state.step, 0
                        started = time.perf_counter()
                        save_hf_model(model, tokenizer, run_dir / "best")
                        state.eval_seconds += time.perf_counter() - started
                    else:
                        state.evals_since_best += 1
                metrics.write(row)
                progress.step(state.step, loss_value, tokens_per_step / elapsed)
                if cfg.train.patience and state.evals_since_best >= cfg.train.patience:
                    stopped_because = "early_stop"
                    progress.message(f"early stop: no improvement in {cfg.train.patience} evaluations; best step {state.best_step}")
                    break
                if stop.received or last or state.step % save_every == 0:
                    save(state.step)
                if stop.received:
                    break
        finally:
            progress.close()
    if stop.received:
        code = 128 + stop.received
        console.print(f"interrupted at step {state.step}; checkpoint saved. Resume with: tunesmith train --out {run_dir} --resume", highlight=False)
        raise SystemExit(code)

    copy_dir(run_dir / "best", run_dir / "final")
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
        "stopped_because": stopped_because,
        "val_tokens": val_blocks.num_tokens,
        "final_dir": str(run_dir / "final"),
        "device": device.type,
        "precision": precision,
    }
    write_summary(run_dir, summary)
    return summary
