"""What a sweep leaves in its folder, rewritten after every trial: sweep.json (every trial), trials.md (the table),
best.yaml (the best trial's config, ready for `tunesmith train`), figures.json and report.html (Optuna's plots).

With two objectives the result is the Pareto front; best.yaml is then its knee (the point nearest the ideal of both,
each objective scaled to the front's range), and sweep.json also says where the headline's best sits on the front.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import warnings
from pathlib import Path

import yaml

from ..report.assets import plotly_js
from ..rundir.durable import write_atomically
from ..rundir.folder import SWEEP_FIGURES, SWEEP_RESULTS
from .plan import confined
from .space import trial_raw
from .study import is_interrupted, study_pruner
from .trial import describe_point

TABLE = "trials.md"
BEST = "best.yaml"
REPORT = "report.html"


def _state(trial) -> str:
    name = trial.state.name.lower()
    if name == "fail":
        return "interrupted" if is_interrupted(trial) else "failed"
    return name


def trial_rows(study, objectives, folder: Path) -> list[dict]:
    rows = []
    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs["continues"]: t.number for t in trials if "continues" in t.user_attrs}
    for trial in trials:
        values = trial.values or []
        rows.append({"number": trial.number, "state": _state(trial), "params": trial.params,
                     **{o.name: (values[i] if i < len(values) else None) for i, o in enumerate(objectives)},
                     "steps": trial.user_attrs.get("steps"), "best_step": trial.user_attrs.get("best_step"),
                     "run_dir": _run_dir_now(trial.user_attrs.get("run_dir"), folder),
                     "error": trial.user_attrs.get("error", ""), "continues": trial.user_attrs.get("continues"),
                     "continued_by": continued.get(trial.number),
                     "seconds": (trial.datetime_complete - trial.datetime_start).total_seconds()
                     if trial.datetime_complete and trial.datetime_start else None})
    return rows


def _run_dir_now(recorded: str | None, folder: Path) -> str | None:
    """Where a trial's run is now: the folder of its name in the sweep folder (which may have been moved since the trial
    ran), or where it was recorded (another machine's, in a study shared through a database)."""
    if recorded and (folder / Path(recorded).name).is_dir():
        return str(folder / Path(recorded).name)
    return recorded


def knee(front: list[dict], objectives) -> dict | None:
    """The front's point nearest the ideal (each objective's best on the front), every objective scaled to [0, 1]."""
    if not front:
        return None

    def scaled(row, objective):
        values = [r[objective.name] for r in front]
        low, high = min(values), max(values)
        if high == low:
            return 0.0
        share = (row[objective.name] - low) / (high - low)
        return 1 - share if objective.maximize else share

    return min(front, key=lambda row: math.hypot(*(scaled(row, o) for o in objectives)))


def _best_rows(study, rows: list[dict], objectives) -> tuple[dict | None, list[dict], dict | None]:
    """(the trial best.yaml holds, the Pareto front, the headline's best trial).

    The knee is picked among the front's trials that improved on the base model: one whose best step is the base
    (step 0) sits on the front with no drift at all, having learned nothing."""
    complete = [r for r in rows if r["state"] == "complete"]
    if not complete:
        return None, [], None
    headline = objectives[0]
    headline_best = (max if headline.maximize else min)(complete, key=lambda r: r["headline"])
    if len(objectives) == 1:
        return headline_best, [], headline_best
    numbers = {t.number for t in study.best_trials}
    front = sorted((r for r in complete if r["number"] in numbers), key=lambda r: r["headline"], reverse=headline.maximize)
    learned = [r for r in front if r["best_step"] != 0]
    return knee(learned or front, objectives), front, headline_best


def _best_config(row: dict, plan) -> str:
    """The best trial's config as the user would write it (the sweep's config file and flags, then the trial's values):
    relative paths in it mean what they meant to the sweep, so train it from the same folder."""
    settings = plan.settings
    raw = trial_raw(settings.config, list(settings.overrides), row["params"])
    return (f"# the best trial of sweep {settings.name} (trial {row['number']}: {describe_point(row['params'])}); train it,\n"
            f"# from the folder the sweep ran in, with: tunesmith train {settings.folder / BEST} --out runs/NAME\n"
            + yaml.safe_dump(raw, sort_keys=False))


def _table(rows: list[dict], objectives, keys: list[str]) -> str:
    head = ["trial", "state", *keys, *(o.label for o in objectives), "steps", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        params = [f"{row['params'][k]:.3g}" if isinstance(row["params"].get(k), float) else str(row["params"].get(k, "–")) for k in keys]
        error = row["error"][:80].replace("|", "\\|")  # a bar would split the cell
        values = [f"{row[o.name]:.4g}" if row[o.name] is not None else ("" if row["state"] != "failed" else error)
                  for o in objectives]
        state = row["state"] + (f" (continued by {row['continued_by']})" if row["continued_by"] is not None else "")
        lines.append("| " + " | ".join([str(row["number"]), state, *params, *values, str(row["steps"] or ""),
                                        Path(row["run_dir"] or "").name]) + " |")
    return "\n".join(lines) + "\n"


def figures(study, objectives) -> dict[str, str]:
    """Optuna's plots as plotly JSON: history, parallel coordinates, importances, intermediate values, the Pareto front."""
    import optuna.visualization as vis
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {}
    headline = objectives[0]
    target = (lambda t: t.values[0]) if len(objectives) > 1 else None
    plots = {
        "history": lambda: vis.plot_optimization_history(study, target=target, target_name=headline.label),
        "parallel coordinates": lambda: vis.plot_parallel_coordinate(study, target=target, target_name=headline.label),
        "importances": lambda: vis.plot_param_importances(study, target=target, target_name=headline.label),
    }
    if any(t.intermediate_values for t in complete):
        plots["intermediate values"] = lambda: vis.plot_intermediate_values(study)
    if len(objectives) > 1:
        plots["pareto front"] = lambda: vis.plot_pareto_front(study, target_names=[o.label for o in objectives])
    made = {}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():  # "too few trials to compute importances": the plot says so itself
                warnings.simplefilter("ignore")
                made[name] = plot().to_json()
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError):  # too few trials, or none that differ, for that plot
            continue
    return made


def _report_html(name: str, table: str, shown: dict[str, str]) -> str:
    import html

    from markdown_it import MarkdownIt  # rich's Markdown parser: the table as trials.md has it

    divs = "".join(f'<h2>{html.escape(title)}</h2><div id="plot{i}" class="plot"></div>' for i, title in enumerate(shown))
    calls = "".join(f"Plotly.newPlot('plot{i}', ...(f => [f.data, f.layout])({figure}));" for i, figure in enumerate(shown.values()))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>sweep {html.escape(name)}</title>"
            "<script src='plotly.min.js'></script><style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
            "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px}</style></head><body>"
            f"<h1>sweep {html.escape(name)}</h1>{MarkdownIt('commonmark', {'html': False}).enable('table').render(table)}{divs}"
            f"<script>{calls}</script></body></html>\n")


def _plotly_beside(folder: Path) -> None:
    """plotly.js (3.5 MB) beside report.html, copied once: the report opens with no network."""
    import shutil

    target = confined(folder, folder / "plotly.min.js")
    if not target.is_file():
        shutil.copyfile(plotly_js(), target)


@contextlib.contextmanager
def _locked(folder: Path):
    """Workers finishing trials at once write the results one after the other."""
    with confined(folder, folder / ".results-lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def write_results(study, plan) -> dict:
    settings, objectives = plan.settings, plan.objectives
    folder = settings.folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, objectives, folder)
    best, front, headline_best = _best_rows(study, rows, objectives)
    keys = plan.space.keys
    results = {
        "study": settings.name, "storage": "sqlite (study.db)" if not settings.storage else "database",
        "objectives": [{"name": o.name, "key": o.key, "label": o.label, "direction": o.direction} for o in objectives],
        "pruner": study_pruner(study),
        "space": [d.describe() for d in plan.space.dimensions], "trials": rows,
        "counts": {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "failed", "interrupted", "running")},
        "steps": sum(r["steps"] or 0 for r in rows),
        "best": best, "pareto_front": [r["number"] for r in front], "headline_best": headline_best,
    }
    for name in (SWEEP_RESULTS, TABLE, BEST, SWEEP_FIGURES, REPORT):
        confined(folder, folder / f"{name}.partial")
    with _locked(folder):
        write_atomically(folder / SWEEP_RESULTS, json.dumps(results, indent=2, default=str) + "\n")
        table = _table(rows, objectives, keys)
        write_atomically(folder / TABLE, table)
        if best:
            write_atomically(folder / BEST, _best_config(best, plan))
        shown = figures(study, objectives)
        write_atomically(folder / SWEEP_FIGURES, json.dumps(shown) + "\n")
        _plotly_beside(folder)
        write_atomically(folder / REPORT, _report_html(settings.name, table, shown))
    return results
