"""What the sweep command and every worker derive from the settings alone: the base config, the space, the objectives
and the stamp a study is started with."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RunConfig
from ..errors import UserError
from .space import Space, build_space, read_space, trial_config
from .study import Objective, SweepSettings, fingerprint, objectives_for, open_study


@dataclass
class SweepPlan:
    settings: SweepSettings
    base: RunConfig
    space: Space
    objectives: list[Objective]
    stamp: str

    @property
    def prunes(self) -> bool:
        """Optuna prunes single-objective studies only."""
        return len(self.objectives) == 1 and self.settings.pruner != "none"

    def study(self, create: bool = False, worker: int = 0):
        return open_study(self.settings, self.objectives, self.stamp, self.base.train.eval_every, self.base.train.seed,
                          create, worker)


def plan_sweep(settings: SweepSettings) -> SweepPlan:
    from ..tasks import task_view

    base = trial_config(settings.config, list(settings.overrides), {})
    if base.output.dir:
        raise UserError("output.dir: a sweep writes each trial to its own folder (SWEEPS/NAME/trial-N); drop --out and output.dir")
    objectives = objectives_for(settings.objectives, task_view(base.task).headline)
    if "drift" in settings.objectives and base.monitor.general_probe == "none":
        raise UserError("--objectives headline,drift needs the forgetting probe; drop monitor.general_probe=none")
    space_raw = read_space(settings.space)
    return SweepPlan(settings, base, build_space(space_raw, base), objectives, fingerprint(settings, space_raw))
