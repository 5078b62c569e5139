"""The sweeps in the runs folder as the page shows them: each folder holding a sweep.json (`tunesmith sweep` rewrites it
after every trial), its table of trials, its best trial and Optuna's plots. Nothing here writes; every path goes through
`RunsFolder.inside`. The trials themselves are ordinary runs, listed with the others."""

from __future__ import annotations

from pathlib import Path

from ..rundir.folder import SWEEP_FIGURES, SWEEP_RESULTS, read_json_object
from .runs import NotARun, RunsFolder

SEARCH_DEPTH = 2  # <root>/<sweep>, or <root>/sweeps/<sweep>


def sweep_names(folder: RunsFolder) -> list[str]:
    return folder.find(lambda path: (path / SWEEP_RESULTS).is_file() and folder.own(path, SWEEP_RESULTS) is not None, SEARCH_DEPTH)


class DamagedSweep(NotARun):
    pass


def _checked(results: dict, name: str) -> dict:
    """sweep.json as the page reads it, or one line saying it is damaged (the page never fails on a file it reads)."""
    def fail():
        raise DamagedSweep(f"{name}: its sweep.json is damaged; the next `tunesmith sweep` of that study rewrites it")

    trials, objectives = results.get("trials"), results.get("objectives")
    if not isinstance(trials, list) or not isinstance(objectives, list) or not objectives:
        fail()
    if not all(isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("label"), str) for o in objectives):
        fail()
    for trial in trials:
        if not (isinstance(trial, dict) and isinstance(trial.get("params"), dict) and isinstance(trial.get("run_dir"), (str, type(None)))
                and isinstance(trial.get("number"), int) and isinstance(trial.get("state"), str)):
            fail()
    if not isinstance(results.get("best"), (dict, type(None))) or not isinstance(results.get("counts"), dict):
        fail()
    if not isinstance(results.get("space"), list) or not isinstance(results.get("pareto_front"), list):
        fail()
    return results


def sweep_rows(folder: RunsFolder) -> list[dict]:
    """One line per sweep: its name, objectives, trial counts and best value; a damaged one says so."""
    rows = []
    for name in sweep_names(folder):
        try:
            results = _checked(read_json_object(folder.inside(f"{name}/{SWEEP_RESULTS}")), name)
        except DamagedSweep as exc:
            rows.append({"name": name, "damaged": str(exc), "counts": {}, "objectives": [], "best": None, "best_trial": None})
            continue
        best = results["best"] or {}
        objectives = results["objectives"]
        rows.append({"name": name, "damaged": "", "counts": results["counts"], "objectives": objectives,
                     "best": best.get(objectives[0]["name"]), "best_trial": best.get("number")})
    return rows


def sweep_detail(folder: RunsFolder, name: str) -> dict:
    """sweep.json with each trial's run named as the page links it, and the plots (plotly JSON) by title."""
    path = folder.inside(name)
    results_path = folder.own(path, SWEEP_RESULTS)
    if results_path is None or not results_path.is_file():
        raise NotARun(f"{name}: no sweep of that name in {folder.root}")
    results = _checked(read_json_object(results_path), name)
    for trial in results["trials"]:
        run = Path(trial.get("run_dir") or "")
        trial["page_run"] = f"{name}/{run.name}" if run.name and (path / run.name).is_dir() else None
    figures_path = folder.own(path, SWEEP_FIGURES)
    figures = read_json_object(figures_path) if figures_path else {}  # a FIFO there would hold the request for good
    figures = {k: v for k, v in figures.items() if isinstance(k, str) and isinstance(v, str)}
    keys = sorted({key for trial in results["trials"] for key in trial["params"]})
    return {"results": results, "figures": figures, "params": keys}
