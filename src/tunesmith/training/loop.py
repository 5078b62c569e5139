"""`train_run`: lock and check the run directory, pick the checkpoint to resume from, and run the recipe (`recipe.py`)."""

from __future__ import annotations

import shlex
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from rich.console import Console

from ..config import RunConfig
from ..errors import UserError
from ..rundir.folder import as_started, check_apart_from_data, check_run_dir
from ..rundir.process import ProcessRecord, RunLock
from ..runtime import Terminated, pick_device, term_as_interrupt
from ..tasks import task_kind
from .checkpoint import list_checkpoints, newest_intact_checkpoint, set_aside
from .distributed import Distributed, setup_distributed, teardown_distributed
from .monitor import check_trackers
from .recipe import Recipe, account
from .resume import check_checkpoint_settings, check_resume_settings
from .setup import settle
from .state import LoopState
from .stop import StopSignal

__all__ = ["LoopState", "StopSignal", "account", "train_run"]


def train_run(cfg: RunConfig, resume: bool = False, console: Console | None = None, force: bool = False,
              judge: Callable[[int, dict], bool] | None = None) -> dict:
    """Fine-tune `cfg.model.name` on `cfg.data`; write the run directory and return summary.json's contents.

    Under torchrun every process runs this; rank 0 alone prints, evaluates and writes files, and picks
    the run directory's default name, which every rank then uses. `judge(step, metrics_row)` is asked after each
    evaluation but the last of a single-process run whether to stop (a sweep's pruner); True saves a checkpoint and
    ends the run as `pruned`, finished like an early stop.
    """
    context = setup_distributed(pick_device(cfg.train.device))
    try:
        if not context.is_main:
            console = Console(quiet=True)
        cfg = cfg.with_run_dir(context.share(cfg.with_run_dir().run_dir if context.is_main else None))
        if judge is not None and context.enabled:
            raise UserError("a run judged at each evaluation (a sweep's trial) runs in one process; start it without torchrun")
        return _train(cfg, resume, force, console or Console(highlight=False, soft_wrap=True, markup=False), context,
                      judge)
    finally:
        teardown_distributed(context)


@contextmanager
def _locked(run_dir: Path, context: Distributed):
    """Rank 0 holds the run folder's lock for the run's life; a refusal reaches every rank, so none waits on the others."""
    lock, refused = RunLock(run_dir), None
    if context.is_main:
        try:
            lock.acquire()
        except UserError as exc:
            refused = str(exc)
    refused = context.share(refused)
    if refused:
        raise UserError(refused)
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _setting_up(run_dir: Path, resuming: bool, console: Console, is_main: bool):
    """Loading the model, preparing the data and the base evaluation, which a stop signal (Ctrl-C, SIGTERM) ends at once:
    there is no step to finish and nothing new to save. One line says what is left to continue from, and the process
    exits as a stopped training does (128 + the signal)."""
    try:
        with term_as_interrupt():
            yield
    except KeyboardInterrupt as exc:
        if is_main:
            out = shlex.quote(str(run_dir))
            console.print(f"stopped while resuming; continue with: tunesmith train --out {out} --resume" if resuming else
                          "stopped before the first checkpoint, so there is nothing to resume; start it again with the "
                          f"same command (tunesmith train --out {out} ...)", highlight=False)
        raise SystemExit(128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)) from None


def _train(cfg: RunConfig, resume: bool, force: bool, console: Console, context: Distributed, judge=None) -> dict:
    with _locked(cfg.run_dir, context):
        return _train_locked(cfg, resume, force, console, context, judge)


def _train_locked(cfg: RunConfig, resume: bool, force: bool, console: Console, context: Distributed, judge=None) -> dict:
    run_dir = cfg.run_dir
    check_run_dir(run_dir, resume, force)
    if not resume:
        check_apart_from_data(run_dir, [*cfg.data.train_paths, *cfg.data.val])
    saved, damaged = None, []
    if resume:
        if not list_checkpoints(run_dir):
            raise UserError(f"--resume: no checkpoint in {run_dir} yet (the run stopped before its first); start it again "
                            f"without --resume: tunesmith train --out {shlex.quote(str(run_dir))} ...")
        cfg = as_started(cfg)
        check_resume_settings(cfg.model_dump(mode="json"), run_dir)
        saved, damaged = newest_intact_checkpoint(run_dir, context.rank, console.print)
        if saved is None:
            raise UserError(f"--resume: every checkpoint in {run_dir} is damaged ({len(damaged)} found); "
                            "start the run anew with another --out")
        check_checkpoint_settings(cfg.model_dump(mode="json"), saved.state, saved.path)
    check_trackers(cfg.monitor)
    task_kind(cfg).check(cfg)  # a setting the task cannot take fails here, before anything loads
    context.barrier()  # every rank has seen the run directory as it was before rank 0 writes to it
    if context.is_main:
        set_aside(damaged)
    with ProcessRecord(run_dir, enabled=context.is_main, resumed=resume) as record:
        recipe = None
        try:
            with _setting_up(run_dir, saved is not None, console, context.is_main):
                cfg, resolved = settle(cfg, console, context)
                recipe = Recipe(cfg, resolved, console, context, judge)
                recipe.setup(saved)
            record.begin(total_steps=recipe.parts.plan.total_steps)
            return recipe.finish(recipe.train())
        finally:
            if recipe is not None:
                recipe.cleanup()
