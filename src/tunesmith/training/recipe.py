"""A fine-tuning run as a recipe: setup, train, save_checkpoint, finish, cleanup.

The recipe holds the run's parts and one `LoopState`, and delegates: the task says what is measured
and saved, the evaluator evaluates and picks the best step, the checkpointer saves, restores and rolls
back, the recorder writes metrics, samples, findings and the summary.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import torch
from rich.console import Console

from ..config import RunConfig
from ..diagnose.distill import distill_facts
from ..distill.student import STUDENT_FILE, teacher_name
from ..diagnose.findings import drift_origin
from ..diagnose.rules import RunFacts
from ..errors import UserError
from ..models import ResolvedModel
from ..rundir.durable import write_atomically
from ..rundir.folder import keep_data_report, mark_run_dir
from ..runtime import peak_flops
from ..tasks import write_task
from ..measures import perplexity
from .benchmarking import RunBenchmarks
from .build import build_model, export_final
from .checkpoint import SavedCheckpoint, check_restored_settings
from .checkpointer import Checkpointer
from .compiling import CompileWhenItRepays, cpu_compiler_available
from .distributed import Distributed
from .evaluator import Evaluator
from .progress import TrainProgress
from .recorder import Recorder
from .resume import keep_earlier_end, record_resume, recorded_settings
from .run_files import PendingSteps, memory_use, write_config
from .setup import RunParts, setup
from .state import LoopState
from .stop import StopSignal
from .teaching import TeacherRecord

WATCHDOG_STEPS = 20


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


def account(rows: list[dict], state: LoopState, cfg: RunConfig, log_row) -> bool:
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


def device_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    import psutil

    return psutil.virtual_memory().total / 2**20


class Recipe:
    def __init__(self, cfg: RunConfig, resolved: ResolvedModel, console: Console, context: Distributed, judge=None):
        """`cfg` settled (`setup.settle`), `resolved` its model's files; `judge` see `train_run`."""
        self.cfg, self.resolved, self.console, self.context = cfg, resolved, console, context
        self.judge = judge
        self.state = LoopState(**recorded_settings(cfg.model_dump(mode="json"), Path.cwd()))  # a resume loads the checkpoint's
        self.recorder = Recorder(cfg, console, context.is_main)
        self.parts: RunParts | None = None
        self.memory_before_training_mb: float | None = None

    def setup(self, checkpoint: SavedCheckpoint | None) -> None:
        """Build the parts; resume from `checkpoint`, or measure the base model: the transfer-learning starting point."""
        cfg, state = self.cfg, self.state
        parts = self.parts = setup(cfg, self.resolved, self.console, self.context, checkpoint)
        task = parts.task
        self.evaluator = Evaluator(parts, cfg.train.eval_batch_size, cfg.train.eval_max_blocks, cfg.monitor.max_drift, self.context,
                                   self.console.print)
        self.checkpointer = Checkpointer(cfg.run_dir, parts, cfg.train.keep_last, self.context, self.console.print)
        self.benchmarks = RunBenchmarks(cfg, parts, self.context, self.console.print)
        self.teacher = TeacherRecord(parts, cfg.run_dir, cfg.train.eval_batch_size or parts.runner.micro_batch_size,
                                     cfg.train.eval_max_blocks, self.context.is_main, self.console.print)
        if self.context.is_main:
            mark_run_dir(cfg.run_dir)
            keep_data_report(parts.data_dir, cfg.run_dir)
            if checkpoint is None:  # before the hint below, so that following it finds the run's settings
                write_config(cfg.run_dir, cfg)
            self.console.print(f"run directory: {cfg.run_dir} (continue it after a crash with: tunesmith train --out "
                               f"{shlex.quote(str(cfg.run_dir))} --resume)", highlight=False)
        self.memory_before_training_mb = max(memory_use().values())
        if checkpoint is not None:
            check_restored_settings(checkpoint, parts.runner.optimizer, parts.runner.scheduler)
            self.checkpointer.restore(checkpoint, state)
            self.teacher.start(resumed=True)  # a resume refused here leaves the run's files as they were
            if self.context.is_main:
                record_resume(cfg, self.console.print)
                keep_earlier_end(cfg.run_dir, state.step, parts.plan.total_steps, self.console.print)
            self.console.print(f"resumed from {checkpoint.path} at step {state.step}", highlight=False)
        state.validation = parts.validation
        prompts = task.sample_prompts(cfg.monitor, parts.val, parts.tokenizer) if self.context.is_main else []
        self.recorder.open(state.step if checkpoint else None, prompts, task.sample_stops(parts.tokenizer), task.prompts_rendered)
        if checkpoint is not None:
            return
        self.teacher.start()
        result = self.evaluator.evaluate(state)
        probed = self.evaluator.probe(state)
        over_budget = cfg.monitor.drift_from is not None and self.evaluator.over_budget(probed)  # earlier runs drifted
        self.evaluator.start(result, state, over_budget)
        state.probe_best = probed
        if over_budget:
            state.over_drift_steps.append(0)
            self.console.print(f"step 0: the model starts {probed['drift_nats']:.3f} nats from {cfg.monitor.drift_from}, over "
                               f"monitor.max_drift {cfg.monitor.max_drift}: the first evaluation back within it becomes the best "
                               "step", highlight=False, markup=False)
        probed = {**probed, **self.benchmarks.at_start(state)}
        for line in task.base_lines(result, parts.val):
            self.console.print(line, highlight=False)
        self.checkpointer.keep_best(state)
        self._samples(result)
        self.recorder.log_row({"step": 0, "epoch": 0.0, **task.eval_row(result), **self.teacher.gap(result), **probed})

    def _samples(self, result=None) -> None:
        if result is not None:
            self.recorder.add_samples(self.state.step, self.parts.task.made_samples(result))
        if not self.parts.sharded:
            with self.state.timed():
                self.recorder.record_samples(self.state.step, self.parts.model, self.parts.tokenizer, self.parts.device,
                                             self.parts.precision)

    def _evaluate(self, row: dict, progress: TrainProgress) -> None:
        result = self.evaluator.evaluate(self.state)
        probed = self.evaluator.probe(self.state)
        progress.evaluated(self.parts.task.progress_text(result) + (f", drift {probed['drift_nats']:.3f} nats" if probed else ""))
        over_budget = self.evaluator.over_budget(probed)
        if over_budget:
            self.state.over_drift_steps.append(self.state.step)
            progress.message(f"step {self.state.step}: drift {probed['drift_nats']:.3f} nats is over monitor.max_drift "
                             f"{self.cfg.monitor.max_drift}, so it cannot be the best step")
        improved = self.evaluator.update_best(result, self.state, over_budget)
        if improved:
            self.state.probe_best = probed
            self.checkpointer.keep_best(self.state)
        row.update(self.parts.task.eval_row(result))
        row.update(self.teacher.gap(result))
        row.update(probed)
        row.update(self.benchmarks.at_evaluation(self.state, improved))
        self._samples(result)
        self.recorder.report_findings(self.facts())

    def _roll_back(self) -> None:
        self.checkpointer.roll_back(self.state)
        self.recorder.truncate_after(self.state.step)
        self.console.print(f"{self.cfg.train.max_bad_steps} non-finite steps in a row: rolled back to step {self.state.step} "
                           "with the learning rate halved", highlight=False)

    def train(self) -> str:
        """The loop; returns why it stopped. A stop signal saves a checkpoint and exits with 128 + the signal."""
        cfg, state, parts, context = self.cfg, self.state, self.parts, self.context
        plan, runner = parts.plan, parts.runner
        save_every = cfg.train.save_every or cfg.train.eval_every
        flush_every = 1 if parts.device.type == "cpu" else cfg.train.log_every  # host syncs cost nothing on a CPU
        progress = TrainProgress(self.console, plan.total_steps, state.step, cfg.train.log_every)
        pending = PendingSteps(parts.flops_per_token, peak_flops(parts.device, cfg.train.peak_tflops))
        stopped_because, stopping = plan.ends_by(), False
        compile_later = cfg.train.compile == "auto" and parts.device.type == "cpu" and cpu_compiler_available() and \
            getattr(runner.loss, "compiles", True)
        watcher = CompileWhenItRepays(runner, plan.total_steps, cfg.model.method, self.console.print) if compile_later else None
        with StopSignal() as stop:
            try:
                while state.step < plan.total_steps:
                    indices = [i for mb in plan.micro_batches(state.step) for i in mb]  # this rank's blocks for the step
                    row = {"step": state.step + 1, "epoch": round(plan.epoch_of(state.step + 1), 4),
                           "lr": runner.optimizer.param_groups[0]["lr"]}
                    if parts.rollouts is not None:
                        row.update(parts.rollouts.begin_step(state.step, indices))
                    tokens = sum(map(parts.train.length, indices))  # real tokens: examples are not all block-long
                    loss, applied, grad_norm = runner.run(parts.train, indices)  # still on the device
                    if parts.rollouts is not None:
                        row.update(parts.rollouts.end_step())
                    state.step += 1
                    state.tokens_seen += tokens
                    pending.add(row, loss, applied, grad_norm, tokens)
                    last = state.step == plan.total_steps
                    evaluating = state.step % cfg.train.eval_every == 0 or last
                    saving = last or state.step % save_every == 0
                    interrupted = stop.received is not None and not context.enabled  # ranks agree on stopping only at flushes
                    if not (evaluating or saving or interrupted or state.step % flush_every == 0):
                        continue
                    rows = pending.flush()  # the host sync
                    state.train_seconds += pending.last_elapsed
                    if watcher is not None:
                        watcher.step_done(state.step, pending.last_elapsed)
                    if account(rows, state, cfg, self.recorder.log_row):
                        self._roll_back()
                        pending.restart_clock()
                        continue
                    if evaluating:
                        self._evaluate(rows[-1], progress)
                    self.recorder.log_row(rows[-1])
                    progress.step(state.step, rows[-1]["train_loss"], rows[-1]["tokens_per_s"])
                    if evaluating and not last and self.judge is not None and self.judge(state.step, rows[-1]):
                        stopped_because = "pruned"
                        progress.message(f"pruned at step {state.step}: stopped early as unpromising; best step {state.best_step}")
                        self.save_checkpoint()
                        break
                    if cfg.train.patience and state.evals_since_best >= cfg.train.patience:
                        stopped_because = "early_stop"
                        over = sum(step > state.best_step for step in state.over_drift_steps)
                        budget = f" ({over} of them over monitor.max_drift)" if over else ""
                        progress.message(f"early stop: no improvement in {state.evals_since_best} evaluations{budget}; best step {state.best_step}")
                        break
                    stopping = context.any(stop.received is not None)
                    if stopping or saving:
                        self.save_checkpoint()
                    if stopping:
                        break
                    pending.restart_clock()
            finally:
                progress.close()
            ended_early = stopped_because in ("early_stop", "pruned")  # the loop broke before its stop check
            if ended_early and not stopping and context.any(stop.received is not None):
                if stopped_because == "early_stop":  # a pruned run saved its checkpoint as it stopped
                    self.save_checkpoint()
                stopping = True
        if stopping:
            self.console.print(f"interrupted at step {state.step}; checkpoint saved. "
                               f"Resume with: tunesmith train --out {shlex.quote(str(cfg.run_dir))} --resume", highlight=False)
            raise SystemExit(stop.exit_code)
        return stopped_because

    def save_checkpoint(self) -> None:
        self.checkpointer.save(self.state)

    def facts(self) -> RunFacts:
        state, cfg, parts = self.state, self.cfg, self.parts
        return RunFacts(
            steps_per_epoch=parts.plan.steps_per_epoch, train_tokens=parts.train.num_tokens, trainable_parameters=parts.trainable,
            method=cfg.model.method, lr=cfg.train.lr, dropout=cfg.model.dropout, weight_decay=cfg.train.weight_decay,
            skipped_steps=state.skipped_steps, base_val_loss=state.base_val_loss, best_val_loss=state.best_val_loss,
            val_tokens=parts.val.num_tokens, val_loss_std=state.val_loss_std, micro_batch_size=parts.runner.micro_batch_size,
            memory_before_training_mb=self.memory_before_training_mb, device_memory_mb=device_memory_mb(parts.device),
            preference_beta=cfg.preference.beta, preference_method=cfg.preference.method, orpo_lambda=cfg.preference.orpo_lambda,
            replay=cfg.data.replay, max_drift=cfg.monitor.max_drift, drift_from=drift_origin(cfg.monitor.model_dump()), grpo_beta=cfg.grpo.beta, grpo_temperature=cfg.grpo.temperature, grpo_group_size=cfg.grpo.group_size,
            grpo_target_kl=cfg.grpo.target_kl,
            **distill_facts(cfg.distill.model_dump(), cfg.task),
        )

    def finish(self, stopped_because: str) -> dict:
        """Export final/ (rank 0; a sharded model from a whole copy built on the CPU) and write summary.json."""
        cfg, state, parts, task = self.cfg, self.state, self.parts, self.parts.task
        run_dir = cfg.run_dir
        if self.context.is_main:
            model = build_model(parts.resolved, cfg.model, torch.device("cpu"), parts.tokenizer, parts.labels) \
                if parts.sharded else parts.model
            export_final(model, parts.tokenizer, run_dir, parts.resolved, cfg.model, parts.labels)
            write_task(run_dir / "final", task.spec(parts.tokenizer))
            self._keep_student_record(run_dir / "final")
            self._benchmark_final()
            self._say_if_the_budget_kept_the_start()
        summary = {
            "model": parts.resolved.spec,  # model.name, or the student made from the teacher
            "method": cfg.model.method,
            "base_val_loss": state.base_val_loss,
            "base_val_ppl": perplexity(state.base_val_loss),
            "best_val_loss": state.best_val_loss,
            "best_val_ppl": perplexity(state.best_val_loss),
            "best_step": state.best_step,
            "steps": state.step,
            "epochs": round(parts.plan.epoch_of(state.step), 4),
            "tokens_seen": state.tokens_seen,
            "train_tokens": parts.train.num_tokens,
            "train_seconds": round(state.train_seconds, 3),
            "eval_seconds": round(state.eval_seconds, 3),
            "tokens_per_s": state.tokens_seen / state.train_seconds if state.train_seconds else 0.0,
            "skipped_steps": state.skipped_steps,
            "rollbacks": state.rollbacks,
            "stopped_because": stopped_because,
            "trainable_parameters": parts.trainable,
            "val_tokens": parts.val.num_tokens,
            "val_loss_std": state.val_loss_std,
            "run_dir": str(run_dir),
            "final_dir": str(run_dir / "final"),
            "data_dir": str(parts.data_dir),
            "device": parts.device.type,
            "precision": parts.precision,
            "micro_batch_size": parts.runner.micro_batch_size,
            "processes": self.context.world_size,
            "memory_before_training_mb": self.memory_before_training_mb,
            "device_memory_mb": device_memory_mb(parts.device),
            "forgetting": self._forgetting_summary(),
            **({"benchmarks": bench} if (bench := self.benchmarks.summary(state, cfg)) else {}),
            **task.summary(state.base_metrics, state.best_metrics, parts.val),
            **self.teacher.summary(self._best_row(), sum(p.numel() for p in parts.model.parameters()), self._lineage()),
        }
        self.recorder.write_summary(summary)
        self.context.barrier()
        return summary

    def _say_if_the_budget_kept_the_start(self) -> None:
        state, budget = self.state, self.cfg.monitor.max_drift
        past = [step for step in state.over_drift_steps if step > 0]
        if budget is None or state.best_step != 0 or not state.over_drift_steps:
            return
        why = f"it is itself over monitor.max_drift {budget}, and no evaluation came back within it" if 0 in state.over_drift_steps \
            else f"no evaluation within monitor.max_drift {budget} improved on it"
        self.console.print(f"[warning] final/ is the model the run started from: {why} ({len(past)} went past the budget); raise "
                           "monitor.max_drift, or train more gently", highlight=False, markup=False)

    def _best_row(self) -> dict:
        """The best evaluation's loss and the task's headline figures, for the summary's teacher-student comparison."""
        state = self.state
        figures = {key: value for key, value in state.best_metrics.items() if isinstance(value, (int, float))}
        return {"val_loss": state.best_val_loss, "val_ppl": perplexity(state.best_val_loss), **figures}

    def _lineage(self) -> dict | None:
        """The model's record of the teacher it was cut from, and whether that is this run's teacher."""
        record, teacher = self.parts.student_record, self.parts.teacher
        if record is None or teacher is None:
            return record
        return {**record, "this_teacher": record["teacher"] == teacher_name(teacher.resolved)}

    def _keep_student_record(self, final: Path) -> None:
        """A student made from its teacher passes its record on to the model it became, so a later run that trains it
        further (a task after general distillation) pairs its blocks with the teacher's it was cut from."""
        if self.parts.student_record is not None:
            write_atomically(final / STUDENT_FILE, json.dumps(self.parts.student_record))

    def _benchmark_final(self) -> None:
        """The final model's benchmark scores (with benchmark_every eval, the best evaluation's again), in a metrics row
        of their own at the last step, naming the step whose weights they score."""
        final = self.benchmarks.at_end(self.state)
        if final:
            self.recorder.log_row({"step": self.state.step, "epoch": round(self.parts.plan.epoch_of(self.state.step), 4), **final,
                                   "bench_of_step": self.state.best_step})

    def _forgetting_summary(self) -> dict:
        """The probe at the base model and at the best step, and what it cost; or why there was none."""
        state, probe = self.state, self.parts.probe
        if probe is None:
            return {"skipped": self.parts.probe_note}
        return {
            "probe": probe.describe().removeprefix("probe: "),
            "probe_tokens": probe.tokens,
            "general_probe": probe.general_source,
            "samples_from": probe.samples_source,
            **({"drift_from": self.cfg.monitor.drift_from} if self.cfg.monitor.drift_from is not None else {}),
            "base_nll": state.probe_base,
            "best_step": state.best_step,
            **{f"best_{key}": value for key, value in state.probe_best.items()},
            **({"max_drift": self.cfg.monitor.max_drift, "over_drift_steps": state.over_drift_steps}
               if self.cfg.monitor.max_drift is not None else {}),
            "probe_seconds": round(state.probe_seconds, 3),
            "validation_seconds": round(state.validation_seconds, 3),
            "share_of_evaluation": state.probe_seconds / (state.probe_seconds + state.validation_seconds) if state.probe_seconds else None,
        }

    def cleanup(self) -> None:
        self.recorder.close()
