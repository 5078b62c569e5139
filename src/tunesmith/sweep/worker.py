"""`tunesmith sweep`: check the space, prepare the data once, then run trials in one process or in K local workers
that share the study; a worker on another machine joins by running the same command against the same --storage."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..errors import UserError
from .results import write_results
from .space import Space, build_space, check_points, read_space, trial_config
from .study import Objective, SweepSettings, fingerprint, objectives_for, open_study
from .trial import LOGS, TrialOutcome, describe_point, run_trial, trial_folder


@dataclass
class SweepPlan:
    """What every worker derives from the settings alone: the base config, the space, the objectives, the study's stamp."""

    settings: SweepSettings
    base: RunConfig
    space: Space
    objectives: list[Objective]
    stamp: str

    @property
    def prunes(self) -> bool:
        return len(self.objectives) == 1 and self.settings.pruner != "none"

    def study(self, create: bool = False, worker: int = 0):
        return open_study(self.settings, self.objectives, self.stamp, self.base.train.eval_every, create, worker)


def plan_sweep(settings: SweepSettings) -> SweepPlan:
    from ..tasks import task_view

    base = trial_config(settings.config, list(settings.overrides), {})
    if base.output.dir:
        raise UserError("output.dir: a sweep writes each trial to its own folder (sweeps/NAME/trial-N); drop --out and output.dir")
    objectives = objectives_for(settings.objectives, task_view(base.task).headline)
    if "drift" in settings.objectives and base.monitor.general_probe == "none":
        raise UserError("--objectives headline,drift needs the forgetting probe; drop monitor.general_probe=none")
    space_raw = read_space(settings.space)
    return SweepPlan(settings, base, build_space(settings.space, base), objectives, fingerprint(settings, space_raw))


def _counted(trial) -> bool:
    """Trials that use up the budget: all but interrupted ones (failed without an error line), which are continued."""
    from optuna.trial import TrialState

    return trial.state != TrialState.FAIL or "error" in trial.user_attrs


def _interrupted(trial) -> bool:
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and "error" not in trial.user_attrs


def _process_alive(pid: int, started: float) -> bool:
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except (psutil.Error, ValueError):
        return False


def reclaim(study) -> int:
    """Trials this machine left running (a worker killed outright) become interrupted; every interrupted trial not yet
    continued is queued again with its settings and its run folder, to resume from its checkpoint. Returns how many."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and not _process_alive(attrs.get("pid", -1), attrs.get("pid_started", 0.0)):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs.get("continues") for t in trials}
    queued = 0
    for trial in trials:
        if _interrupted(trial) and trial.number not in continued:
            study.enqueue_trial(trial.params, user_attrs={"continues": trial.number, "run_dir": trial.user_attrs.get("run_dir")})
            queued += 1
    return queued


def _room(study, total: int) -> bool:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return any(t.state == TrialState.WAITING for t in trials) or sum(map(_counted, trials)) < total


def _tell(study, trial, outcome: TrialOutcome) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("steps", outcome.steps)
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


@contextlib.contextmanager
def _term_as_interrupt():
    """SIGTERM between trials stops the sweep as Ctrl-C does (inside a trial the run's own handler saves a checkpoint)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def work(plan: SweepPlan, deadline: float | None, say=print, worker: int = 0) -> bool:
    """Run trials until the study holds `--trials` of them or the deadline passes; False when interrupted."""
    with _term_as_interrupt():
        return _work(plan, deadline, say, worker)


def _work(plan: SweepPlan, deadline: float | None, say, worker: int) -> bool:
    import psutil
    from optuna.trial import TrialState

    settings = plan.settings
    study = plan.study(worker=worker)
    me = psutil.Process()
    while (deadline is None or time.time() < deadline) and _room(study, settings.trials):
        trial = study.ask()
        for key, value in {"host": socket.gethostname(), "pid": me.pid, "pid_started": me.create_time()}.items():
            trial.set_user_attr(key, value)
        point = plan.space.sample(trial)
        try:
            cfg = trial_config(settings.config, list(settings.overrides), point)
        except UserError as exc:
            trial.set_user_attr("error", f"refused by the config: {exc.lines()[0]}")
            study.tell(trial, state=TrialState.FAIL)
            raise UserError(f"space: the drawn point {describe_point(point)} is refused by the config: {exc.lines()[0]}; "
                            "narrow the space") from None
        kept = trial.user_attrs.get("run_dir")
        run_dir = Path(kept) if kept and Path(kept).is_dir() else trial_folder(settings.folder, trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        say(f"trial {trial.number}: {describe_point(point)}" + (" (continuing its run)" if kept and run_dir == Path(kept) else ""))
        started = time.perf_counter()
        outcome = run_trial(trial, cfg, run_dir, plan.objectives, plan.prunes, settings.folder / LOGS / f"{run_dir.name}.log")
        _tell(study, trial, outcome)
        gc.collect()  # the trial's model and optimizer go before the next one loads
        say(_outcome_line(outcome, plan.objectives, time.perf_counter() - started))
        write_results(study, plan)
        if outcome.state == "interrupted":
            return False
    return True


def _worker_main(settings: SweepSettings, deadline: float | None, threads: int, index: int) -> None:
    """A local worker process: its share of the cores, its own lines prefixed with its number."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()  # as the command's own process: the libraries' progress bars would bury the sweep's lines
    hf_logging.disable_progress_bar()
    try:
        finished = work(plan_sweep(settings), deadline, say=lambda line: print(f"[worker {index}] {line}", flush=True), worker=index)
    except KeyboardInterrupt:
        finished = False
    except UserError as exc:
        print(f"[worker {index}] error: {exc.lines()[0]}", flush=True)
        raise SystemExit(2) from None
    raise SystemExit(0 if finished else 130)


def _run_workers(settings: SweepSettings, deadline: float | None) -> bool:
    """K worker processes, each with its share of the cores; Ctrl-C reaches them all, and each stops its trial."""
    threads = max(1, (os.cpu_count() or 1) // settings.workers)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker_main, args=(settings, deadline, threads, i)) for i in range(settings.workers)]
    for process in workers:
        process.start()
    def stop_workers(signum, frame):  # Ctrl-C reaches the workers itself; a signal sent to this process alone is passed on
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop_workers) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for process in workers:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [process.exitcode for process in workers]
    if any(code == 2 for code in codes):
        raise UserError("a worker stopped on an error (its line is above)")
    return all(code == 0 for code in codes)


def run_sweep(settings: SweepSettings, say=print) -> dict:
    """Check everything, prepare the data once, run the trials; returns the results (sweep.json's contents)."""
    from ..preparation import prepare
    from ..tasks import task_kind

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("tunesmith sweep runs its trials itself; start it without torchrun (--workers K for several processes)")
    plan = plan_sweep(settings)
    checked = check_points(plan.space, settings.config, list(settings.overrides), lambda cfg: task_kind(cfg).check(cfg))
    settings.folder.mkdir(parents=True, exist_ok=True)
    study = plan.study(create=True)
    leftover = sorted(settings.folder.glob("trial-*"))
    if leftover and not study.get_trials(deepcopy=False):
        raise UserError(f"{settings.folder} holds trial folders ({leftover[0].name}, ...) but its study has no trials (was "
                        "study.db removed?); move the folder away or pick another --study")
    queued = reclaim(study)
    say(f"sweep {settings.name}: {len(plan.space.dimensions)} keys ({'; '.join(d.describe() for d in plan.space.dimensions)}), "
        f"{checked} points checked against the config; objective: {', '.join(f'{o.label} ({o.direction})' for o in plan.objectives)}; "
        f"study in {settings.storage_url if not settings.storage else 'the --storage database'}")
    if queued:
        say(f"{queued} interrupted trial(s) queued to continue from their checkpoints")
    prepared = prepare(plan.base)
    say(f"data prepared once for every trial: {prepared.directory}")
    deadline = time.time() + settings.minutes * 60 if settings.minutes else None
    if settings.workers > 1:
        finished = _run_workers(settings, deadline)
    else:
        finished = work(plan, deadline, say)
    results = write_results(plan.study(), plan)
    if not finished:
        raise KeyboardInterrupt
    return results
