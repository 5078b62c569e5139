"""One trial of a sweep: an ordinary run in the sweep folder whose evaluations are reported to Optuna, so its pruner
can stop it early, and what the trial ended as."""

from __future__ import annotations

import math
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import UserError, first_line
from ..rundir.folder import read_metric_rows
from .study import Objective

LOGS = "logs"
STOP_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # how a run that took a stop signal exits, its checkpoint saved


def trial_folder(folder: Path, number: int) -> Path:
    return folder / f"trial-{number:03d}"


def describe_point(point: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}" for key, value in point.items())


@dataclass
class TrialOutcome:
    """complete (with a value per objective), pruned, failed (with its first error line) or interrupted."""

    number: int
    state: str
    run_dir: Path
    values: list[float] = field(default_factory=list)
    error: str = ""
    steps: int = 0
    best_step: int | None = None


class Reporter:
    """Judges the run at each evaluation: reports the first objective to the trial and asks the pruner whether to stop."""

    def __init__(self, trial, objective: Objective, prunes: bool):
        self.trial, self.objective, self.prunes = trial, objective, prunes

    def replay(self, rows: list[dict], up_to: int) -> None:
        """A continued trial's evaluations up to its checkpoint, so the pruner sees the whole curve."""
        for row in rows:
            if 0 < row.get("step", 0) <= up_to:
                self._report(row["step"], row)

    def _report(self, step: int, row: dict) -> bool:
        value = row.get(self.objective.key)
        if not self.prunes or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        self.trial.report(float(value), step)
        return True

    def __call__(self, step: int, row: dict) -> bool:
        return self._report(step, row) and self.trial.should_prune()


def best_values(run_dir: Path, summary: dict, objectives: list[Objective]) -> list[float]:
    """Each objective at the run's best step (the weights its final/ holds), from metrics.jsonl."""
    rows = read_metric_rows(run_dir / "metrics.jsonl")
    best = summary.get("best_step", 0)
    at_best = {}
    for row in rows:
        if row.get("step") == best:
            at_best.update({k: v for k, v in row.items() if k not in at_best})
    values = []
    for objective in objectives:
        value = at_best.get(objective.key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"the run measured no {objective.label} ({objective.key}) at its best step {best}")
        values.append(float(value))
    return values


def _checkpoint_step(run_dir: Path) -> int | None:
    from ..training.checkpoint import list_checkpoints

    steps = [int(path.name.removeprefix("step-")) for path in list_checkpoints(run_dir)]
    return max(steps) if steps else None


def run_trial(trial, cfg, run_dir: Path, objectives: list[Objective], prunes: bool, log_path: Path) -> TrialOutcome:
    """Train `cfg` in `run_dir` (continuing it when it holds a checkpoint), reporting each evaluation to `trial`.

    Ctrl-C or SIGTERM ends it as interrupted (its checkpoint saved, to be continued by the next `tunesmith sweep`);
    any other error as failed, with its first line, and the sweep goes on.
    """
    from ..api import train

    reporter = Reporter(trial, objectives[0], prunes)
    resumed_at = _checkpoint_step(run_dir) if run_dir.is_dir() else None
    if resumed_at is not None:
        reporter.replay(read_metric_rows(run_dir / "metrics.jsonl"), resumed_at)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        console = Console(file=log, highlight=False, soft_wrap=True, markup=False, width=120)
        try:
            with warnings.catch_warnings():  # the libraries' warnings go to the trial's log, not between the sweep's lines
                warnings.showwarning = lambda message, category, *_a, **_k: console.print(f"warning: {category.__name__}: {message}")
                summary = train(cfg.with_run_dir(run_dir), resume=resumed_at is not None, console=console, judge=reporter)
        except (KeyboardInterrupt, SystemExit) as exc:
            if isinstance(exc, SystemExit) and exc.code not in STOP_CODES:
                raise
            return TrialOutcome(trial.number, "interrupted", run_dir)
        except Exception as exc:  # a trial that fails is recorded, and the sweep goes on
            console.print(f"error: {first_line(exc)}")
            return TrialOutcome(trial.number, "failed", run_dir, error=first_line(exc))
    state = "pruned" if summary["stopped_because"] == "pruned" else "complete"
    done = {"steps": summary["steps"], "best_step": summary.get("best_step")}
    try:
        values = best_values(run_dir, summary, objectives)
    except UserError as exc:
        return TrialOutcome(trial.number, "failed", run_dir, error=exc.lines()[0], **done)
    return TrialOutcome(trial.number, state, run_dir, values, **done)
