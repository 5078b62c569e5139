"""What the sweep command and every worker derive from the settings alone: the base config, the space, the objectives
and the stamp a study is started with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..errors import UserError
from .space import Space, build_space, read_space, trial_config
from .study import Objective, SweepSettings, fingerprint, objectives_for, open_study, sampler_for


@dataclass
class SweepPlan:
    settings: SweepSettings
    base: RunConfig
    space: Space
    objectives: list[Objective]
    stamp: str

    start: int = 0  # how many sweep commands started on this study before this one

    def study(self, create: bool = False):
        return open_study(self.settings, self.objectives, self.stamp, self.base.train.eval_every, create)

    def seed_sampler(self, study, worker: int = 0) -> None:
        """TPE seeded from the config's train.seed, so a sweep repeats; moved by the command's start, the worker's number
        and the trials already in the study, so no second command or worker, and no continued study, draws the same
        points again."""
        draws = 100_000 * self.start + 1000 * worker + len(study.get_trials(deepcopy=False))
        study.sampler = sampler_for(self.settings, self.base.train.seed + draws)


def plan_sweep(settings: SweepSettings) -> SweepPlan:
    from ..tasks import task_view

    base = trial_config(settings.config, list(settings.overrides), {})
    if base.output.dir:
        raise UserError("output.dir: a sweep writes each trial to its own folder (SWEEPS/NAME/trial-N); drop --out and output.dir")
    objectives = objectives_for(settings.objectives, task_view(base.task).headline)
    if len(objectives) > 1 and settings.pruner not in (None, "none"):
        raise UserError(f"--pruner {settings.pruner}: Optuna prunes single-objective studies only; leave --pruner out with two objectives")
    if "drift" in settings.objectives and base.monitor.general_probe == "none":
        raise UserError("--objectives headline,drift needs the forgetting probe; drop monitor.general_probe=none")
    space_raw = read_space(settings.space)
    return SweepPlan(settings, base, build_space(space_raw, base), objectives, fingerprint(settings, space_raw))


def confined(folder: Path, path: Path) -> Path:
    """`path`, refused when a symbolic link inside the sweep folder would lead it elsewhere: the sweep writes only inside."""
    resolved, root = path.resolve(), folder.resolve()
    if resolved != root and root not in resolved.parents:
        raise UserError(f"{path}: leads outside the sweep folder {root} (a symbolic link); remove the link")
    return path
