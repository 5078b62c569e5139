"""A worker: asks the study for trials and trains them one after another until the budget is spent; and K of them as
local processes, each with its share of the cores."""

from __future__ import annotations

import fcntl
import gc
import multiprocessing
import signal
import socket
import time
from pathlib import Path

from ..errors import UserError
from ..runtime import term_as_interrupt, usable_cores
from .plan import SweepPlan, confined
from .results import write_results
from .space import trial_config
from .study import Objective, is_interrupted, prunes
from .trial import LOGS, TrialOutcome, describe_point, run_trial, trial_folder


def _budget_left(study, total: int) -> bool:
    """Trials still to run: queued continuations, or fewer than `total` trials that count (interrupted ones do not)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return any(t.state == TrialState.WAITING for t in trials) or sum(not is_interrupted(t) for t in trials) < total


def _next_trial(settings, study):
    """The next trial, or None once the budget is spent. Local workers take turns here (a lock file in the sweep folder),
    so that two starting together do not both pass the budget check before either's trial exists."""
    with confined(settings.folder, settings.folder / ".ask-lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return study.ask() if _budget_left(study, settings.trials) else None


def _tell(study, trial, outcome: TrialOutcome) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("steps", outcome.steps)
    trial.set_user_attr("best_step", outcome.best_step)
    if outcome.state == "complete":
        study.tell(trial, outcome.values)
    elif outcome.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        if outcome.state == "failed":
            trial.set_user_attr("error", outcome.error)
        study.tell(trial, state=TrialState.FAIL)


def _outcome_line(outcome: TrialOutcome, objectives: list[Objective], seconds: float) -> str:
    values = ", ".join(f"{o.label} {v:.4g}" for o, v in zip(objectives, outcome.values))
    detail = {"complete": values, "pruned": f"pruned at step {outcome.steps}", "failed": f"failed: {outcome.error}",
              "interrupted": "interrupted; its checkpoint is kept and the next `tunesmith sweep` continues it"}[outcome.state]
    return f"trial {outcome.number}: {detail} ({seconds / 60:.1f} min; {outcome.run_dir})"


def work(plan: SweepPlan, study, deadline: float | None, say=print) -> bool:
    """Run trials until the study holds `--trials` of them or the deadline passes; False when interrupted."""
    with term_as_interrupt():
        return _work(plan, study, deadline, say)


def _trial_settings(plan: SweepPlan, study, trial, me) -> tuple:
    """The trial's point and config; a point the config or the task refuses ends the sweep in one line."""
    from optuna.trial import TrialState

    from ..tasks import task_kind

    for key, value in {"host": socket.gethostname(), "pid": me.pid, "pid_started": me.create_time()}.items():
        trial.set_user_attr(key, value)
    point = plan.space.sample(trial)
    try:
        cfg = trial_config(plan.settings.config, list(plan.settings.overrides), point)
        task_kind(cfg).check(cfg)
    except UserError as exc:
        trial.set_user_attr("error", f"refused by the config: {exc.lines()[0]}")
        study.tell(trial, state=TrialState.FAIL)
        raise UserError(f"space: the drawn point {describe_point(point)} is refused: {exc.lines()[0]}; narrow the space") from None
    return point, cfg


def _work(plan: SweepPlan, study, deadline: float | None, say) -> bool:
    import psutil
    from optuna.trial import TrialState

    settings = plan.settings
    me = psutil.Process()
    while deadline is None or time.time() < deadline:
        trial = _next_trial(settings, study)
        if trial is None:
            break
        point, cfg = _trial_settings(plan, study, trial, me)
        continued = trial.user_attrs.get("run_dir")
        # a trial's folder is the sweep folder's child of that name, wherever the folder has moved since it was recorded
        run_dir = settings.folder / Path(continued).name if continued else trial_folder(settings.folder, trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            log_path = confined(settings.folder, settings.folder / LOGS / f"{run_dir.name}.log")
            confined(settings.folder, run_dir)
        except UserError as exc:
            trial.set_user_attr("error", exc.lines()[0])
            study.tell(trial, state=TrialState.FAIL)
            raise
        say(f"trial {trial.number}: {describe_point(point)}" + (f" (continuing trial {trial.user_attrs['continues']})" if continued else ""))
        started = time.perf_counter()
        outcome = run_trial(trial, cfg, run_dir, plan.objectives, prunes(study), log_path)
        _tell(study, trial, outcome)
        gc.collect()  # the trial's model and optimizer go before the next one loads
        say(_outcome_line(outcome, plan.objectives, time.perf_counter() - started))
        write_results(study, plan)
        if outcome.state == "interrupted":
            return False
    return True


def _worker_main(plan: SweepPlan, deadline: float | None, threads: int, index: int, errors) -> None:
    """A local worker process on the plan the command checked: its share of the cores, its own lines prefixed with its
    number. Exits 0 when the budget is spent, 130 when stopped, 2 on a user error (its line sent to `errors`)."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()  # as the command's own process: the libraries' progress bars would bury the sweep's lines
    hf_logging.disable_progress_bar()

    def say(line: str) -> None:
        print(f"[worker {index}] {line}", flush=True)

    try:
        study = plan.study()
        plan.seed_sampler(study, worker=index)
        finished = work(plan, study, deadline, say)
    except KeyboardInterrupt:
        finished = False
    except UserError as exc:
        errors.put(f"worker {index}: {exc.lines()[0]}")
        raise SystemExit(2) from None
    raise SystemExit(0 if finished else 130)


def run_workers(plan: SweepPlan, deadline: float | None) -> bool:
    """K worker processes, each with its share of the cores; False when they were stopped.

    Ctrl-C reaches every worker itself (one process group); a signal sent to this process alone is passed on. A worker
    that stops on an error stops the others; one that crashes is named with its exit code."""
    count = min(plan.settings.workers, plan.settings.trials)  # a worker past the trials would only start and stop
    threads = max(1, usable_cores() // count)
    context = multiprocessing.get_context("spawn")
    errors = context.SimpleQueue()
    workers = [context.Process(target=_worker_main, args=(plan, deadline, threads, i, errors)) for i in range(count)]
    for process in workers:
        process.start()

    def stop_all(*_):
        for process in workers:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: the worker's trial saves its checkpoint

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(process.is_alive() for process in workers):
            if any(process.exitcode not in (None, 0, 130) for process in workers):
                stop_all()
            time.sleep(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [process.exitcode for process in workers]
    if 2 in codes:
        raise UserError(errors.get() if not errors.empty() else "a worker stopped on an error")
    crashed = [(i, code) for i, code in enumerate(codes) if code not in (0, 130, -signal.SIGTERM)]
    if crashed:
        index, code = crashed[0]
        raise UserError(f"worker {index} crashed (exit code {code}{': killed, out of memory?' if code == -9 else ''}); "
                        "the next `tunesmith sweep` continues any trial it left")
    return all(code == 0 for code in codes)
