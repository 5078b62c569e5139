"""Everything a training run holds besides the loop itself: inputs, model, optimizer, and the run's file actions."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console

from ..config import RunConfig, check_block_size
from ..diagnose import RunFacts, diagnose
from ..data import PreparedData, TokenBlocks, prepare_data
from ..errors import UserError
from ..models import ResolvedModel, context_length, count_parameters, load_model_config, resolve_model, tunesmith_home
from ..models.methods import parameter_counts, short_count
from ..tasks import task_tokenizer, write_task
from ..tasks.chat import end_of_turn
from ..tasks.classify import LabelCoder, class_weights, classification_metrics, majority_baseline, predict_examples
from .build import build_model, export_final
from ..run_directory import mark_run_dir
from .checkpoint import SavedCheckpoint, apply_checkpoint, gather_trainable, newest_intact_checkpoint, save_checkpoint, set_aside, \
    write_tensors
from .distributed import Distributed, wrap_ddp, wrap_fsdp
from ..runtime import enable_tf32, flops_per_token, pick_device, pick_precision
from ..loss import Validation, perplexity, validation_loss_with_fallback
from .optim import build_optimizer, build_scheduler
from .plan import StepPlan
from .monitor import Trackers
from .run_files import MetricsLog, memory_use, write_config, write_summary
from .samples import SampleLog
from .step import StepRunner, largest_micro_batch


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
    val_loss_std: float = math.nan
    best_score: float = math.inf  # the selection metric, lower is better (val_loss, or minus accuracy / macro-F1)
    base_metrics: dict = field(default_factory=dict)  # classification metrics of the base model
    best_metrics: dict = field(default_factory=dict)  # ... and at the best step


def _load_inputs(cfg: RunConfig, console: Console) -> tuple[ResolvedModel, object, PreparedData]:
    resolved = resolve_model(cfg.model.name, cfg.model.trust_remote_code, log=console.print)
    model_config = load_model_config(resolved)
    check_block_size(cfg.data.block_size, context_length(model_config))
    tokenizer = task_tokenizer(resolved, cfg.task, log=console.print)
    data = prepare_data(cfg.data, cfg.clean, tokenizer, tunesmith_home(), model_params=count_parameters(model_config),
                        task=cfg.task_settings)
    for line in data.summary_lines():
        console.print(f"data  {line}", highlight=False)
    return resolved, tokenizer, data


def device_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    import psutil

    return psutil.virtual_memory().total / 2**20


@dataclass
class Session:
    """One run's parts, built by `open_session`; its methods are the loop's leaf actions."""

    cfg: RunConfig
    console: Console
    context: Distributed
    run_dir: Path
    device: torch.device
    precision: str
    resolved: ResolvedModel
    tokenizer: object
    model: torch.nn.Module
    runner: StepRunner
    plan: StepPlan
    train_blocks: TokenBlocks
    val_blocks: TokenBlocks
    sharded: bool
    trainable: int
    data_dir: Path
    task_meta: dict = field(default_factory=dict)
    state: LoopState = field(default_factory=LoopState)
    metrics: MetricsLog | None = None
    trackers: Trackers | None = None
    sample_log: SampleLog | None = None
    history: list[dict] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    memory_before_training_mb: float | None = None
    flops_per_token: float | None = None

    @property
    def optimizer(self):
        return self.runner.optimizer

    def _timed(self, started: float) -> None:
        self.state.eval_seconds += time.perf_counter() - started

    def evaluate(self) -> Validation:
        """On rank 0, the other ranks waiting for its result; a sharded model needs every rank in its forward."""
        result = None
        if self.context.is_main or self.sharded:
            started = time.perf_counter()
            batch = self.cfg.train.eval_batch_size or self.runner.micro_batch_size
            result = validation_loss_with_fallback(self.model, self.val_blocks, batch, self.device, self.precision,
                                                   self.cfg.train.eval_max_blocks, self.console.print)
            if self.coder is not None:
                result = replace(result, task=self._classification(batch))
            self._timed(started)
        return result if self.sharded else self.context.share(result)

    @property
    def coder(self) -> LabelCoder | None:
        return LabelCoder(**self.task_meta["coder"]) if self.cfg.task == "classify" else None

    def _classification(self, batch_size: int) -> dict:
        limit = self.cfg.train.eval_max_blocks
        predicted, _ = predict_examples(self.model, self.val_blocks, self.coder, self.tokenizer, batch_size, self.device,
                                        self.precision, limit)
        truth = self.val_blocks.classes[: len(predicted)]
        return classification_metrics(truth, predicted, self.coder.labels)

    def score(self, result: Validation) -> float:
        """What picks the best checkpoint and drives early stopping; lower is better."""
        metric = self.cfg.classify.metric if self.cfg.task == "classify" else "val_loss"
        return result.loss if metric == "val_loss" else -result.task[metric]

    def eval_row(self, result: Validation) -> dict:
        row = {"val_loss": result.loss, "val_ppl": perplexity(result.loss), "val_accuracy": result.accuracy}
        if result.task:
            row.update(accuracy=result.task["accuracy"], macro_f1=result.task["macro_f1"])
        return row

    def update_best(self, result: Validation) -> bool:
        """Record a new best evaluation (and save its weights); False when this one is not better."""
        state = self.state
        if self.score(result) >= state.best_score:
            state.evals_since_best += 1
            return False
        state.best_score, state.best_val_loss, state.best_step, state.evals_since_best = self.score(result), result.loss, state.step, 0
        state.best_metrics = result.task
        self.keep_best()
        return True

    def log_row(self, row: dict) -> None:
        self.history.append(row)
        if self.metrics is not None:
            self.metrics.write(row)
        if self.trackers is not None:
            self.trackers.log(row)

    def record_samples(self) -> None:
        """Greedy generations for the fixed prompts (rank 0; skipped when the model is sharded)."""
        if self.sample_log is not None and not self.sharded:
            started = time.perf_counter()
            samples = self.sample_log.write(self.state.step, self.model, self.tokenizer, self.device)
            if samples and self.trackers is not None:
                self.trackers.samples(self.state.step, samples)
            self._timed(started)

    def facts(self) -> RunFacts:
        state, cfg = self.state, self.cfg
        return RunFacts(
            steps_per_epoch=self.plan.steps_per_epoch, train_tokens=self.train_blocks.num_tokens, trainable_parameters=self.trainable,
            method=cfg.model.method, lr=cfg.train.lr, dropout=cfg.model.dropout, weight_decay=cfg.train.weight_decay,
            skipped_steps=state.skipped_steps, base_val_loss=state.base_val_loss, best_val_loss=state.best_val_loss,
            val_tokens=self.val_blocks.num_tokens, val_loss_std=state.val_loss_std, micro_batch_size=self.runner.micro_batch_size,
            memory_before_training_mb=self.memory_before_training_mb, device_memory_mb=device_memory_mb(self.device),
        )

    def report_findings(self) -> None:
        """Print each warning or error finding once, when it first appears."""
        for finding in diagnose(self.history, self.facts()):
            if finding.severity != "info" and finding.kind not in self.reported:
                self.reported.add(finding.kind)
                advice = "; ".join(f"{a.key}={a.value}" if a.key and a.value is not None else a.why for a in finding.advice[:3])
                self.console.print(f"[{finding.severity}] {finding.kind}: {finding.message} (try: {advice})", highlight=False, markup=False)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None

    def save(self) -> None:
        started = time.perf_counter()
        self.state.micro_batch_size = self.runner.micro_batch_size
        r = self.runner
        save_checkpoint(self.run_dir, self.state.step, self.model, r.optimizer, r.scheduler, r.scaler, asdict(self.state),
                        self.cfg.train.keep_last, self.context)
        self._timed(started)

    def keep_best(self) -> None:
        started = time.perf_counter()
        tensors = gather_trainable(self.model) if self.sharded or self.context.is_main else None
        if self.context.is_main:
            (self.run_dir / "best").mkdir(exist_ok=True)
            write_tensors(tensors, self.run_dir / "best" / "trainable.safetensors")
        self._timed(started)

    def restore(self, saved: SavedCheckpoint) -> None:
        r = self.runner
        rollbacks = self.state.rollbacks
        self.state = LoopState(**apply_checkpoint(saved, self.model, r.optimizer, r.scheduler, r.scaler))
        self.state.rollbacks = max(self.state.rollbacks, rollbacks)
        r.micro_batch_size = self.state.micro_batch_size or r.micro_batch_size

    def roll_back(self) -> None:
        """Back to the last checkpoint with the learning rate halved, after too many non-finite steps in a row."""
        saved, damaged = newest_intact_checkpoint(self.run_dir, self.context.rank, self.console.print)
        if saved is None:
            raise UserError(f"training diverged: {self.state.bad_in_a_row} non-finite steps in a row before the first checkpoint; "
                            f"lower train.lr (now {self.optimizer.param_groups[0]['lr']:.3g})")
        self.context.barrier()
        if self.context.is_main:
            set_aside(damaged)
        self.restore(saved)
        self.state.rollbacks += 1
        scheduler = self.runner.scheduler
        scheduler.base_lrs = [lr / 2 for lr in scheduler.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr / 2
        if self.metrics is not None:
            self.metrics.truncate_after(self.state.step)
        self.console.print(f"{self.cfg.train.max_bad_steps} non-finite steps in a row: rolled back to step {self.state.step} "
                           "with the learning rate halved", highlight=False)

    def start(self, checkpoint: SavedCheckpoint | None) -> None:
        """Resume from `checkpoint` (read and checked), or measure the base model: the transfer-learning starting point."""
        if self.context.is_main:
            mark_run_dir(self.run_dir)
        self.memory_before_training_mb = max(memory_use().values())
        if checkpoint is not None:
            self.restore(checkpoint)
            self.console.print(f"resumed from {checkpoint.path} at step {self.state.step}", highlight=False)
        if self.context.is_main:  # trackers first: a missing tracker package must fail before any file is written
            self.trackers = Trackers(self.cfg.monitor, self.run_dir, self.cfg, resume=checkpoint is not None)
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.state.step if checkpoint else None, self.console.print)
            self.sample_log = SampleLog(self.cfg.monitor, self.val_blocks, self.tokenizer, self.run_dir / "samples.jsonl", self.cfg.task)
        if checkpoint is None:
            if self.context.is_main:
                write_config(self.run_dir, self.cfg)
            result = self.evaluate()
            base = self.state.base_val_loss = self.state.best_val_loss = result.loss
            self.state.best_score = self.score(result)
            self.state.base_metrics = self.state.best_metrics = result.task
            self.state.val_loss_std = result.loss_std
            unit = {"lm": "blocks", "chat": "examples", "classify": "examples"}[self.cfg.task]
            targets = {"lm": "tokens", "chat": "assistant tokens", "classify": "targets"}[self.cfg.task]
            self.console.print(f"base model: validation loss {base:.4f}, perplexity {perplexity(base):.2f} "
                               f"({len(self.val_blocks)} {unit}, {self.val_blocks.num_tokens:,} {targets})", highlight=False)
            if result.task:
                self.console.print(f"base model: accuracy {result.task['accuracy']:.1%}, macro-F1 {result.task['macro_f1']:.3f}"
                                   + (" (an untrained head)" if self.coder.method == "head" else " (zero-shot)"), highlight=False)
            self.keep_best()
            self.record_samples()
            self.log_row({"step": 0, "epoch": 0.0, **self.eval_row(result)})

    @property
    def head_labels(self) -> list[str] | None:
        coder = self.coder
        return coder.labels if coder is not None and coder.method == "head" else None

    def task_spec(self) -> dict:
        """Saved as final/tunesmith_task.json: how `chat`, `predict` and `serve` use the model."""
        if self.cfg.task == "chat":
            return {"task": "chat", "end_of_turn": end_of_turn(self.tokenizer)}
        if self.cfg.task == "classify":
            return {"task": "classify", **self.coder.as_dict(), "block_size": self.cfg.data.block_size,
                    "text_field": self.cfg.data.text_field, "label_field": self.cfg.data.label_field}
        return {"task": "lm"}

    def _task_summary(self) -> dict:
        state = self.state
        if self.cfg.task != "classify":
            return {"task": self.cfg.task}
        coder = self.coder
        truth = self.val_blocks.classes[: len(self.val_blocks)]
        majority = majority_baseline(self.task_meta["class_counts"], truth, coder.labels)
        baseline = state.base_metrics if coder.method == "generative" else majority
        best = state.best_metrics or state.base_metrics
        return {
            "task": "classify", "classify_method": coder.method, "metric": self.cfg.classify.metric, "labels": coder.labels,
            "accuracy": best["accuracy"], "macro_f1": best["macro_f1"], "per_class": best["per_class"], "confusion": best["confusion"],
            "baseline": "zero-shot" if coder.method == "generative" else "majority class",
            "base_accuracy": baseline["accuracy"], "base_macro_f1": baseline["macro_f1"],
            "majority_accuracy": majority["accuracy"], "majority_macro_f1": majority["macro_f1"],
        }

    def finish(self, stopped_because: str) -> dict:
        """Export final/ (rank 0; a sharded model from a whole copy built on the CPU) and write summary.json."""
        state = self.state
        if self.context.is_main:
            model = build_model(self.resolved, self.cfg.model, torch.device("cpu"), self.tokenizer, self.head_labels) \
                if self.sharded else self.model
            export_final(model, self.tokenizer, self.run_dir, self.resolved, self.cfg.model, self.head_labels)
            write_task(self.run_dir / "final", self.task_spec())
        summary = {
            "model": self.cfg.model.name,
            "method": self.cfg.model.method,
            "base_val_loss": state.base_val_loss,
            "base_val_ppl": perplexity(state.base_val_loss),
            "best_val_loss": state.best_val_loss,
            "best_val_ppl": perplexity(state.best_val_loss),
            "best_step": state.best_step,
            "steps": state.step,
            "epochs": round(self.plan.epoch_of(state.step), 4),
            "tokens_seen": state.tokens_seen,
            "train_tokens": self.train_blocks.num_tokens,
            "train_seconds": round(state.train_seconds, 3),
            "eval_seconds": round(state.eval_seconds, 3),
            "tokens_per_s": state.tokens_seen / state.train_seconds if state.train_seconds else 0.0,
            "skipped_steps": state.skipped_steps,
            "rollbacks": state.rollbacks,
            "stopped_because": stopped_because,
            "trainable_parameters": self.trainable,
            "val_tokens": self.val_blocks.num_tokens,
            "val_loss_std": state.val_loss_std,
            "run_dir": str(self.run_dir),
            "final_dir": str(self.run_dir / "final"),
            "data_dir": str(self.data_dir),
            "device": self.device.type,
            "precision": self.precision,
            "micro_batch_size": self.runner.micro_batch_size,
            "processes": self.context.world_size,
            "memory_before_training_mb": self.memory_before_training_mb,
            "device_memory_mb": device_memory_mb(self.device),
        }
        summary.update(self._task_summary())
        if self.context.is_main:
            write_summary(self.run_dir, summary)
        self.context.barrier()
        return summary


def open_session(cfg: RunConfig, console: Console, context: Distributed) -> Session:
    """Resolve and load the model, prepare the data, and build the optimizer and step runner."""
    torch.manual_seed(cfg.train.seed + context.rank)
    device = context.device(pick_device(cfg.train.device))
    precision = pick_precision(cfg.train.precision, device)
    enable_tf32(device)
    with context.main_first():
        resolved, tokenizer, data = _load_inputs(cfg, console)
    head = data.meta["task"]["coder"]["labels"] if data.task == "classify" and cfg.classify.method == "head" else None
    model = build_model(resolved, cfg.model, device, tokenizer, head)
    model.train()
    trainable, total_params = parameter_counts(model)
    console.print(f"model {resolved.spec}: {short_count(total_params)} parameters, {short_count(trainable)} trainable ({cfg.model.method}); "
                  f"{device.type}, {precision}", highlight=False)

    weights = None
    if data.task == "classify" and cfg.classify.class_weights:
        weights = class_weights(data.meta["task"]["class_counts"], data.meta["task"]["labels"])
    train_blocks, val_blocks = data.blocks("train", class_weights=weights), data.blocks("val")
    micro = cfg.train.micro_batch_size
    if micro == "auto":
        micro = largest_micro_batch(model, train_blocks, device, precision, 64, console.print)
    lengths = [train_blocks.length(i) for i in range(len(train_blocks))] if data.task != "lm" else None
    plan = StepPlan(len(train_blocks), micro, cfg.train.grad_accum, cfg.train.epochs, cfg.train.max_steps, cfg.train.seed,
                    context.world_size, context.rank, lengths)
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
        runner.forward_model = wrap_ddp(model, device)
    elif cfg.train.fused_loss and not context.enabled and head is None:  # a classification head has no vocabulary to fuse
        runner.fuse_output_loss()
    if cfg.train.compile is True or (cfg.train.compile == "auto" and device.type == "cuda"):
        runner.compile()
    session = Session(cfg, console, context, cfg.run_dir, device, precision, resolved, tokenizer, model, runner, plan,
                      train_blocks, val_blocks, sharded, trainable, data.directory, data.meta.get("task", {}))
    session.flops_per_token = flops_per_token(load_model_config(resolved), total_params, cfg.data.block_size)
    return session
