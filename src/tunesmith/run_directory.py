"""The run directory as a place on disk: the marker that says a folder is a tunesmith run, the checks made before
a run writes into a folder, the record of the process training in it, and reading its JSON-lines files back
when a killed process left the last line torn.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import signal
import time
from pathlib import Path

from .errors import UserError

MARKER = ".tunesmith-run"
GENERATION_EVAL = "generation_eval.json"  # `eval RUN --generate`'s scores, which the report shows
DATA_REPORT = "data_report.json"
DATA_META = "data_meta.json"  # the prepared data's meta.json: splits, token counts, the task's encoding
PROCESS = "process.json"  # the training process: its pid while it runs, how it ended once it has


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


def has_checkpoint(run_dir: Path) -> bool:
    checkpoints = run_dir / "checkpoints"
    return checkpoints.is_dir() and any(p.name.startswith("step-") and "." not in p.name for p in checkpoints.iterdir())


def _has_saved_work(run_dir: Path) -> bool:
    return has_checkpoint(run_dir) or (run_dir / "final").exists()


def mark_run_dir(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"tunesmith_run": True, "created": _dt.datetime.now().isoformat(timespec="seconds")}) + "\n")


def keep_data_report(data_dir: Path, run_dir: Path) -> None:
    """A copy of the prepared data's report (and its meta.json) in the run: it outlives the data cache and is there
    to read while the run trains."""
    import shutil

    for source, target in ((DATA_REPORT, DATA_REPORT), ("meta.json", DATA_META)):
        if (data_dir / source).is_file():
            shutil.copyfile(data_dir / source, run_dir / target)


def read_json_object(path: Path) -> dict:
    """A JSON file's object, or {} for a file that is missing, damaged or holds something else."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_data_file(run_dir: Path, summary: dict, own: str, cached: str) -> dict:
    path = run_dir / own
    if not path.is_file() and summary.get("data_dir"):
        path = Path(summary["data_dir"]) / cached
    return read_json_object(path)


def read_data_report(run_dir: Path, summary: dict) -> dict:
    """The run's data report: its own copy, or, for a run from before copies were kept, the one in the data cache."""
    return _read_data_file(run_dir, summary, DATA_REPORT, DATA_REPORT)


def read_data_meta(run_dir: Path, summary: dict) -> dict:
    return _read_data_file(run_dir, summary, DATA_META, "meta.json")


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


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class ProcessRecord:
    """`process.json`: that this process trains in the run directory, and on the way out how it ended.

    It is written on entering when the folder is already a run (a resume, or a run the web page launched), else by
    `begin` once training has marked the folder, so a refused config leaves no folder behind. A stop signal
    (exit 128 + SIGINT or SIGTERM) or Ctrl-C ends it `stopped`; any other exception `crashed`, with its first
    line. A process killed outright leaves it without an end, which `run_state` reads as crashed once the pid
    is gone or belongs to a later process.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled, self.record = run_dir, enabled, None

    def begin(self, **facts) -> None:
        """Write the record, with `facts` added (the run's total steps, once they are known)."""
        from .durable import write_atomically

        if not self.enabled:
            return
        if self.record is None:
            self.record = {"pid": os.getpid(), "process_started": _process_started(os.getpid()), "started": time.time()}
        self.record.update(facts)
        write_atomically(self.run_dir / PROCESS, json.dumps(self.record) + "\n")

    def __enter__(self) -> "ProcessRecord":
        if is_run_dir(self.run_dir):
            self.begin()
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        from .durable import write_atomically

        if self.record is None:
            return
        outcome, detail = "finished", ""
        if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code in (128 + signal.SIGINT, 128 + signal.SIGTERM)):
            outcome = "stopped"
        elif exc is not None:
            outcome, detail = "crashed", (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        with contextlib.suppress(OSError):
            write_atomically(self.run_dir / PROCESS, json.dumps({**self.record, "ended": time.time(), "outcome": outcome,
                                                                  "detail": detail}) + "\n")


def read_process(run_dir: Path) -> dict:
    return read_json_object(run_dir / PROCESS)


def training_pid(record: dict) -> int | None:
    """The pid of the process the record names, while that very process still runs (a reused pid does not count)."""
    pid, started = record.get("pid"), record.get("process_started")
    if "ended" in record or not isinstance(pid, int) or not isinstance(started, (int, float)):
        return None
    now = _process_started(pid)
    return pid if now is not None and abs(now - started) < 1.0 else None


def run_state(run_dir: Path, record: dict | None = None) -> str:
    """running, finished, stopped (by a signal, with its checkpoint) or crashed (an error, or a process killed outright)."""
    record = read_process(run_dir) if record is None else record
    if training_pid(record) is not None:
        return "running"
    if (run_dir / "summary.json").is_file():
        return "finished"
    return "stopped" if record.get("outcome") == "stopped" else "crashed"
