"""`tunesmith sweep`: check the space, open the study, continue what an earlier sweep left, prepare the data once, then
run the trials in this process or in K local workers. A worker on another machine joins by running the same command
against the same --storage."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time

from ..errors import UserError
from ..rundir.process import training_pid
from .plan import SweepPlan, confined, plan_sweep
from .results import write_results
from .space import check_points, trial_config
from .study import SweepSettings, is_interrupted, study_pruner
from .worker import run_workers, work


@contextlib.contextmanager
def _folder_lock(settings: SweepSettings):
    """Two sweep commands starting on one folder at once take turns to continue what was left."""
    with confined(settings.folder, settings.folder / ".start-lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def reclaim(study) -> int:
    """Trials this machine left running (a worker killed outright) become interrupted; every interrupted trial of this
    machine not yet continued is queued again with its settings and its run folder, to resume from its checkpoint.
    Another machine's trials are left to it: their folders are on its disk. Returns how many were queued."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        alive = training_pid({"pid": attrs.get("pid"), "process_started": attrs.get("pid_started")}) is not None
        if attrs.get("host") == host and not alive:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs.get("continues") for t in trials}
    queued = 0
    for trial in trials:
        if is_interrupted(trial) and trial.number not in continued and trial.user_attrs.get("host") in (host, None):
            study.enqueue_trial(trial.params, user_attrs={"continues": trial.number, "run_dir": trial.user_attrs.get("run_dir")})
            queued += 1
    return queued


def check_tokenizers(plan: SweepPlan, say=print) -> None:
    """A space whose model.name candidates tokenize differently is refused before any trial trains, where an objective is
    measured per token: a perplexity over other tokens does not rank models (`eval --compare` sums the loss instead)."""
    from ..data.tokens import tokenizer_fingerprint
    from ..models import resolve_model
    from ..tasks import task_kind

    names = next((d.choices for d in plan.space.dimensions if d.key == "model.name"), ())
    if len(names) < 2 or not any(o.per_token for o in plan.objectives):
        return
    settings, seen = plan.settings, {}
    for name in names:
        cfg = trial_config(settings.config, list(settings.overrides), {"model.name": name})
        tokenizer = task_kind(cfg).tokenizer(resolve_model(cfg.model.name, cfg.model.trust_remote_code, log=say), log=say)
        seen.setdefault(tokenizer_fingerprint(tokenizer), name)
    if len(seen) > 1:
        first, other = list(seen.values())[:2]
        raise UserError(f"space: model.name {first} and {other} have different tokenizers, so their "
                        f"{' and '.join(o.label for o in plan.objectives if o.per_token)} count other tokens and do not rank; "
                        "sweep each model as its own study, then compare the best runs with tunesmith eval RUN --compare OTHER")


def run_sweep(settings: SweepSettings, say=print) -> dict:
    """Check everything, prepare the data once, run the trials; returns the results (sweep.json's contents)."""
    from ..preparation import prepare
    from ..tasks import task_kind

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("tunesmith sweep runs its trials itself; start it without torchrun (--workers K for several processes)")
    plan = plan_sweep(settings)
    checked = check_points(plan.space, settings.config, list(settings.overrides), lambda cfg: task_kind(cfg).check(cfg))
    check_tokenizers(plan, say)
    settings.folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(settings):
        study = plan.study(create=True)
        leftover = sorted(settings.folder.glob("trial-*"))
        if leftover and not study.get_trials(deepcopy=False):
            raise UserError(f"{settings.folder} holds trial folders ({leftover[0].name}, ...) but its study has no trials (was "
                            "study.db removed?); move the folder away or pick another --study")
        queued = reclaim(study)
        plan.start = study.user_attrs.get("starts", 0)
        study.set_user_attr("starts", plan.start + 1)
    say(f"sweep {settings.name}: {'; '.join(d.describe() for d in plan.space.dimensions)}; {checked} points checked against "
        f"the config; objective: {', '.join(f'{o.label} ({o.direction})' for o in plan.objectives)}; pruner: {study_pruner(study)}; "
        f"study in {settings.storage_url if not settings.storage else 'the --storage database'}")
    if queued:
        say(f"{queued} interrupted trial(s) queued to continue from their checkpoints")
    prepared = prepare(plan.base)
    say(f"data prepared for every trial: {prepared.directory}")
    deadline = time.time() + settings.minutes * 60 if settings.minutes else None
    if settings.workers > 1:
        finished = run_workers(plan, deadline)
    else:
        plan.seed_sampler(study)
        finished = work(plan, study, deadline, say)
    results = write_results(study, plan)
    if not finished:
        raise KeyboardInterrupt
    return results
