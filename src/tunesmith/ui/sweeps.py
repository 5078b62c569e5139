"""The sweeps in the runs folder as the page shows them: each folder holding a sweep.json (`tunesmith sweep` rewrites it
after every trial), its table of trials, its best trial and Optuna's plots. Nothing here writes; every path goes through
`RunsFolder.inside`. The trials themselves are ordinary runs, listed with the others."""

from __future__ import annotations

import json
from pathlib import Path

from ..rundir.folder import SWEEP_FIGURES, SWEEP_RESULTS, read_json_object
from .runs import NotARun, RunsFolder

SEARCH_DEPTH = 2  # <root>/<sweep>, or <root>/sweeps/<sweep>


def sweep_names(folder: RunsFolder) -> list[str]:
    return folder.find(lambda path: (path / SWEEP_RESULTS).is_file() and folder.own(path, SWEEP_RESULTS) is not None, SEARCH_DEPTH)


def sweep_rows(folder: RunsFolder) -> list[dict]:
    """One line per sweep: its name, objectives, trial counts and best value."""
    rows = []
    for name in sweep_names(folder):
        results = read_json_object(folder.inside(f"{name}/{SWEEP_RESULTS}"))
        best = results.get("best") or {}
        objectives = results.get("objectives") or []
        rows.append({"name": name, "counts": results.get("counts", {}), "objectives": objectives,
                     "best": best.get(objectives[0]["name"]) if objectives and best else None, "best_trial": best.get("number")})
    return rows


def sweep_detail(folder: RunsFolder, name: str) -> dict:
    """sweep.json with each trial's run named as the page links it, and the plots (plotly JSON) by title."""
    path = folder.inside(name)
    results_path = folder.own(path, SWEEP_RESULTS)
    if results_path is None or not results_path.is_file():
        raise NotARun(f"{name}: no sweep of that name in {folder.root}")
    results = read_json_object(results_path)
    for trial in results.get("trials", []):
        run = Path(trial.get("run_dir") or "")
        trial["page_run"] = f"{name}/{run.name}" if run.name and (path / run.name).is_dir() else None
    figures_path = folder.own(path, SWEEP_FIGURES)
    try:
        figures = json.loads(figures_path.read_text(encoding="utf-8")) if figures_path else {}
    except (OSError, ValueError):
        figures = {}
    keys = sorted({key for trial in results.get("trials", []) for key in (trial.get("params") or {})})
    return {"results": results, "figures": figures if isinstance(figures, dict) else {}, "params": keys}
