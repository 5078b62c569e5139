"""The training loop: one function that reads top to bottom; its leaf actions live on the Session."""

from __future__ import annotations

import math
import signal

from rich.console import Console

from ..config import RunConfig
from ..errors import UserError
from ..run_directory import check_resume_settings, check_run_dir
from .checkpoint import list_checkpoints, newest_intact_checkpoint, set_aside
from .distributed import Distributed, setup_distributed, teardown_distributed
from ..runtime import peak_flops, pick_device
from ..loss import perplexity
from .monitor import check_trackers
from .progress import TrainProgress
from .run_files import PendingSteps
from .session import LoopState, Session, open_session

WATCHDOG_STEPS = 20


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


def train_run(cfg: RunConfig, resume: bool = False, console: Console | None = None, force: bool = False) -> dict:
    """Fine-tune `cfg.model.name` on `cfg.data`; write the run directory and return summary.json's contents.

    Under torchrun every process runs this; rank 0 alone prints, evaluates and writes files, and picks
    the run directory's default name, which every rank then uses.
    """
    context = setup_distributed(pick_device(cfg.train.device))
    try:
        if not context.is_main:
            console = Console(quiet=True)
        cfg = cfg.with_run_dir(context.share(cfg.with_run_dir().run_dir if context.is_main else None))
        return _train(cfg, resume, force, console or Console(highlight=False, soft_wrap=True, markup=False), context)
    finally:
        teardown_distributed(context)


def _train(cfg: RunConfig, resume: bool, force: bool, console: Console, context: Distributed) -> dict:
    run_dir = cfg.run_dir
    check_run_dir(run_dir, resume, force)
    saved, damaged = None, []
    if resume:
        if not list_checkpoints(run_dir):
            raise UserError(f"--resume: no checkpoint in {run_dir} yet (the run stopped before its first); start it again "
                            f"without --resume: tunesmith train --out {run_dir} ...")
        check_resume_settings(cfg.model_dump(mode="json"), run_dir)
        saved, damaged = newest_intact_checkpoint(run_dir, context.rank, console.print)
        if saved is None:
            raise UserError(f"--resume: every checkpoint in {run_dir} is damaged ({len(damaged)} found); "
                            "start the run anew with another --out")
    check_trackers(cfg.monitor)
    console.print(f"run directory: {run_dir} (continue it after a crash with: tunesmith train --out {run_dir} --resume)")
    context.barrier()  # every rank has seen the run directory as it was before rank 0 writes to it
    if context.is_main:
        set_aside(damaged)
    session = open_session(cfg, console, context)
    try:
        session.start(saved)
        return _loop(session)
    finally:
        session.close()


def _loop(session: Session) -> dict:
    cfg, state, plan, context = session.cfg, session.state, session.plan, session.context
    save_every = cfg.train.save_every or cfg.train.eval_every
    flush_every = 1 if session.device.type == "cpu" else cfg.train.log_every  # host syncs cost nothing on a CPU
    progress = TrainProgress(session.console, plan.total_steps, state.step, cfg.train.log_every)
    pending = PendingSteps(session.flops_per_token, peak_flops(session.device, cfg.train.peak_tflops))
    stopped_because, stopping = plan.ends_by(), False
    with StopSignal() as stop:
        try:
            while state.step < plan.total_steps:
                indices = [i for mb in plan.micro_batches(state.step) for i in mb]  # this rank's blocks for the step
                tokens = sum(map(session.train_blocks.length, indices))  # real tokens: examples are not all block-long
                row = {"step": state.step + 1, "epoch": round(plan.epoch_of(state.step + 1), 4),
                       "lr": session.optimizer.param_groups[0]["lr"]}
                loss, applied, grad_norm = session.runner.run(session.train_blocks, indices)  # still on the device
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
                if _record(rows, state, cfg, session.log_row):
                    session.roll_back()
                    state = session.state
                    pending.restart_clock()
                    continue
                if evaluating:
                    result = session.evaluate()
                    progress.evaluated(perplexity(result.loss), result.task)
                    session.update_best(result)
                    rows[-1].update(session.eval_row(result))
                    session.record_samples()
                    session.report_findings()
                session.log_row(rows[-1])
                progress.step(state.step, rows[-1]["train_loss"], rows[-1]["tokens_per_s"])
                if cfg.train.patience and state.evals_since_best >= cfg.train.patience:
                    stopped_because = "early_stop"
                    progress.message(f"early stop: no improvement in {cfg.train.patience} evaluations; best step {state.best_step}")
                    break
                stopping = context.any(stop.received is not None)
                if stopping or saving:
                    session.save()
                if stopping:
                    break
                pending.restart_clock()
        finally:
            progress.close()
    if stopping:
        session.console.print(f"interrupted at step {state.step}; checkpoint saved. "
                              f"Resume with: tunesmith train --out {session.run_dir} --resume", highlight=False)
        raise SystemExit(128 + (stop.received or signal.SIGTERM))
    return session.finish(stopped_because)
