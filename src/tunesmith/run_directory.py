"""The run directory as a place on disk: the marker that says a folder is a tunesmith run, the checks made before
a run writes into a folder, and reading its JSON-lines files back when a killed process left the last line torn.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from .errors import UserError

MARKER = ".tunesmith-run"
GENERATION_EVAL = "generation_eval.json"  # `eval RUN --generate`'s scores, which the report shows


def is_run_dir(path: Path) -> bool:
    return (path / MARKER).is_file()


def check_run_dir(run_dir: Path, resume: bool, force: bool = False) -> None:
    """Refuse, before anything loads, a run directory that is a file, or a folder of the user's own files.

    A folder that is already a tunesmith run is continued with --resume; one that holds other files is
    written into only with --force, since the run's files (config.yaml, summary.json, ...) would replace theirs.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a folder; name a new folder for the run")
    if resume or not run_dir.is_dir():
        return
    if is_run_dir(run_dir):
        if _has_saved_work(run_dir):
            raise UserError(f"{run_dir} already holds a run; continue it with --resume or pick another --out")
        return  # a run that stopped before its first checkpoint: nothing of it to keep
    present = sorted(p.name for p in run_dir.iterdir())
    if present and not force:
        shown = ", ".join(present[:3]) + (f" and {len(present) - 3} more" if len(present) > 3 else "")
        raise UserError(f"--out {run_dir} holds files that are not a tunesmith run ({shown}); pick a new folder, "
                        "or pass --force to write the run into it (its files of the same names would be replaced)")


def _has_saved_work(run_dir: Path) -> bool:
    checkpoints = run_dir / "checkpoints"
    saved = checkpoints.is_dir() and any(p.name.startswith("step-") and "." not in p.name for p in checkpoints.iterdir())
    return saved or (run_dir / "final").exists()


def mark_run_dir(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"tunesmith_run": True, "created": _dt.datetime.now().isoformat(timespec="seconds")}) + "\n")


def read_json_lines(path: Path) -> tuple[list[dict], int]:
    """The rows of a JSON-lines file, and how many lines were dropped as torn (a process killed mid-write)."""
    rows, torn = [], 0
    if not path.is_file():
        return rows, torn
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            torn += 1
    return rows, torn


# settings that decide which weights train and what they mean: a checkpoint's tensors fit only the same ones
WEIGHT_SETTINGS = ("task", "model.name", "model.method", "model.freeze_layers", "model.train_last_layers", "model.lora_rank",
                   "model.lora_alpha", "model.lora_targets", "classify.method")


def _setting(values: dict, dotted: str):
    for part in dotted.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def check_resume_settings(settings: dict, run_dir: Path) -> None:
    """Refuse to resume with a setting that changes the trainable weights, naming it and the run's value."""
    import yaml

    saved_path = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) if saved_path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise UserError(f"--resume: {saved_path} is damaged; restore it, or start a new run with another --out") from None
    if not isinstance(saved, dict):
        return
    for key in WEIGHT_SETTINGS:
        before, now = _setting(saved, key), _setting(settings, key)
        if before != now:
            raise UserError(f"--resume: {key} is {now!r} here but {before!r} in {saved_path}; it decides which weights train, "
                            "so a run cannot change it midway: drop that setting, or start a new run with another --out")
