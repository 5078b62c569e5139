"""The run directory as a place on disk: the marker that says a folder is a tunesmith run, the checks made before
a run writes into a folder, the lock and record of the process training in it, the folder its relative paths
mean something in, and reading its JSON-lines files back when a killed process left the last line torn.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import signal
import time
from pathlib import Path

from ..config import PROBE_WORDS, RunConfig, benchmark_is_path, read_yaml_leniently
from ..errors import UserError, first_line

MARKER = ".tunesmith-run"
CONFIG_FILE = "config.yaml"
SWEEP_RESULTS = "sweep.json"  # what `tunesmith sweep` keeps in a sweep folder, rewritten after every trial, and the page reads
SWEEP_FIGURES = "figures.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
GENERATION_EVAL = "generation_eval.json"  # `eval RUN --generate`'s scores, which the report shows
DATA_REPORT = "data_report.json"
PREPARED_META = "meta.json"  # in a prepared data folder: splits, token counts, the task's encoding
DATA_META = "data_meta.json"  # the run's copy of its prepared data's meta.json
PROCESS = "process.json"  # the training process: its pid while it runs, how it ended once it has
LOCK = ".tunesmith-lock"  # flock-ed by the one process that trains in the folder; holds its pid
SQLITE = "sqlite:///"
START_CWD = "cwd"  # process.json's key: the working directory the run was first started from, kept across resumes


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
    present = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
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

    for source, target in ((DATA_REPORT, DATA_REPORT), (PREPARED_META, DATA_META)):
        if (data_dir / source).is_file():
            shutil.copyfile(data_dir / source, run_dir / target)


def read_json_object(path: Path) -> dict:
    """A JSON file's object, or {} for a file that is missing, damaged or holds something else."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def read_yaml_object(path: Path) -> dict:
    """A YAML file's mapping (safe types only), or {} for a file that is missing, damaged or holds something else: what
    the readers of a run's saved config.yaml take, which show or use what they can of a run and never fail on it."""
    try:
        value = read_yaml_leniently(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def config_section(config: dict, name: str) -> dict:
    """One section of a config read by `read_yaml_object`, or {} where a damaged file made it something else."""
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _read_data_file(run_dir: Path, summary: dict, own: str, cached: str) -> dict:
    path = run_dir / own
    if not path.is_file() and isinstance(summary.get("data_dir"), str) and summary["data_dir"]:
        path = Path(summary["data_dir"]) / cached
    return read_json_object(path)


def read_data_report(run_dir: Path, summary: dict) -> dict:
    """The run's data report: its own copy, or, for a run from before copies were kept, the one in the data cache."""
    return _read_data_file(run_dir, summary, DATA_REPORT, DATA_REPORT)


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


def has_step(row: dict) -> bool:
    """Whether a metrics or samples row names its step as a whole number (a row edited by hand may not)."""
    return isinstance(row.get("step"), int) and not isinstance(row["step"], bool)


def read_metric_rows(path: Path) -> list[dict]:
    """metrics.jsonl's rows that name their step, each with its numbers and flags only (NaN kept: a diverged loss is a
    finding; `skipped: true` marks a non-finite step): what diagnose, report and sweeps read, a row edited by hand
    into other kinds of values left without them."""
    return [{key: value for key, value in row.items() if isinstance(value, (int, float))}
            for row in read_json_lines(path)[0] if has_step(row)]


def read_sample_rows(path: Path) -> list[dict]:
    """samples.jsonl's rows that name their step and hold a prompt and a text as strings."""
    return [row for row in read_json_lines(path)[0]
            if has_step(row) and isinstance(row.get("prompt"), str) and isinstance(row.get("text"), str)]


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

    def __init__(self, run_dir: Path, enabled: bool = True, resumed: bool = False):
        self.run_dir, self.enabled, self.resumed, self.record = run_dir, enabled, resumed, None

    def begin(self, **facts) -> None:
        """Write the record, with `facts` added (the run's total steps, once they are known).

        The start folder (`cwd`) is the one a fresh start ran in: a resume from elsewhere keeps it, so the run's
        relative paths keep their meaning (`resolve_run_paths`).
        """
        from .durable import write_atomically

        if not self.enabled:
            return
        if self.record is None:
            self.record = {"pid": os.getpid(), "process_started": _process_started(os.getpid()), "started": time.time(),
                           START_CWD: self._start_dir()}
        self.record.update(facts)
        write_atomically(self.run_dir / PROCESS, json.dumps(self.record) + "\n")

    def _start_dir(self) -> str:
        kept = run_start_dir(self.run_dir) if self.resumed else None
        return str(kept) if kept else os.getcwd()

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
            outcome, detail = "crashed", first_line(exc)
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
    """running, finished, pruned (stopped early by a sweep), stopped (by a signal, with its checkpoint) or crashed (an
    error, or a process killed outright)."""
    record = read_process(run_dir) if record is None else record
    if training_pid(record) is not None:
        return "running"
    if (run_dir / "summary.json").is_file():
        return "pruned" if read_json_object(run_dir / "summary.json").get("stopped_because") == "pruned" else "finished"
    return "stopped" if record.get("outcome") == "stopped" else "crashed"


class RunLock:
    """One trainer per run folder: an exclusive `flock` on `<run>/.tunesmith-lock`, held for the trainer's whole life.

    The kernel drops the lock when its holder's process ends, however it ends, so a killed trainer never leaves the
    folder locked; the pid written into the file only names the holder to the one refused. A folder that never
    became a run (a refused config) is left as it was found: the lock file, and the folder if the lock made it, go.
    """

    def __init__(self, run_dir: Path):
        self.run_dir, self.handle, self.made = run_dir, None, []

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise a UserError naming the live trainer that holds it."""
        import fcntl

        if self.run_dir.exists() and not self.run_dir.is_dir():
            return  # check_run_dir names this problem
        self.made = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        path = self.run_dir / LOCK
        while self.handle is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handle = _open_lock(path)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise UserError(_busy_message(self.run_dir)) from None
            if _same_file(handle, path):
                self.handle = handle
            else:
                handle.close()  # the holder removed the file as it let go: lock the one now in its place
        self.handle.truncate(0)
        self.handle.write(json.dumps({"pid": os.getpid(), "process_started": _process_started(os.getpid())}) + "\n")
        self.handle.flush()

    def release(self) -> None:
        if self.handle is None:
            return
        with contextlib.suppress(OSError):
            self.handle.truncate(0)  # no pid left to name once the lock is free
            if not is_run_dir(self.run_dir):
                (self.run_dir / LOCK).unlink()
                for folder in self.made:
                    folder.rmdir()
        self.handle.close()
        self.handle = None


def _open_lock(path: Path):
    """The lock file itself, never what a link in its place leads to (truncating it would destroy another file)."""
    import stat

    refused = (f"{path} is not the lock file tunesmith writes (a link, a folder or a special file is in its place); "
               "remove it and run again")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise UserError(refused if os.path.islink(path) or os.path.isdir(path) else
                        f"{path}: cannot open the run's lock file ({exc.strerror}); check the folder's permissions") from None
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode) or found.st_nlink > 1:  # a hard link's other name is someone's file
        os.close(fd)
        raise UserError(refused)
    return os.fdopen(fd, "r+", encoding="utf-8")


def _same_file(handle, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the live trainer holding the run folder's lock, read without touching the lock (so a page that polls
    it can never refuse a trainer that is starting); None when no trainer holds it."""
    return training_pid(read_json_object(run_dir / LOCK))


def _busy_message(run_dir: Path) -> str:
    for _ in range(20):  # the holder writes its pid just after taking the lock
        pid = lock_holder(run_dir)
        if pid is not None:
            break
        time.sleep(0.05)
    who = f"training process {pid}" if pid is not None else "another training process"
    return (f"{run_dir} is in use: {who} is training in it; wait for it to end, or stop it"
            f"{f' (kill -INT {pid})' if pid is not None else ''}, then run this again")


def run_start_dir(run_dir: Path) -> Path | None:
    """The working directory the run was first started from (None for a run from before it was recorded)."""
    start = read_process(run_dir).get(START_CWD)
    return Path(start) if isinstance(start, str) and Path(start).is_absolute() else None  # as recorded: always absolute


def _against(start: Path, path: str) -> str:
    return path if path.startswith("~") or Path(path).is_absolute() else str(start / path)


def _store_against(start: Path, uri: str) -> str:
    """An MLflow store named by a relative folder or a relative sqlite file, made absolute; a server stays as it is."""
    if uri.lower().startswith(SQLITE):
        rest = uri[len(SQLITE):]
        return uri if rest.startswith("/") else SQLITE + str(start / rest)
    return _against(start, uri) if ":" not in uri else uri


def resolve_run_paths(settings: dict, start: Path) -> dict:
    """`settings` (a config as a dict) with each relative path made absolute against `start`, the run's start folder.

    Data paths and a probe file always are, so that a path missing there is named where it was meant; `model.name`
    only when it names something that exists there, since it may also be a hub id or the embedded model's name.
    """
    resolved = json.loads(json.dumps(settings))
    data, model, monitor = (resolved.get(key) or {} for key in ("data", "model", "monitor"))
    for source in data.get("train") or []:
        if isinstance(source, dict):
            paths = source.get("path")
            source["path"] = _against(start, paths) if isinstance(paths, str) else [_against(start, p) for p in paths or []]
    data["train"] = [_against(start, item) if isinstance(item, str) else item for item in data.get("train") or []]
    data["val"] = [_against(start, item) for item in data.get("val") or []]
    probe = monitor.get("general_probe")
    if isinstance(probe, str) and probe not in PROBE_WORDS:
        monitor["general_probe"] = _against(start, probe)
    if isinstance(monitor.get("benchmarks"), list):  # names of lm-eval tasks, or task files and folders
        monitor["benchmarks"] = [_against(start, b) if isinstance(b, str) and benchmark_is_path(b, start) else b
                                 for b in monitor["benchmarks"]]
    if isinstance(monitor.get("mlflow_uri"), str):
        monitor["mlflow_uri"] = _store_against(start, monitor["mlflow_uri"])
    name = model.get("name")
    if isinstance(name, str) and not Path(name).is_absolute() and (start / name).exists():
        model["name"] = str(start / name)
    for reward in (resolved.get("grpo") or {}).get("rewards") or []:
        if isinstance(reward, dict) and isinstance(reward.get("run"), str):
            reward["run"] = _against(start, reward["run"])
        if isinstance(reward, dict) and isinstance(reward.get("python"), str):
            file, _, function = reward["python"].rpartition(":")
            reward["python"] = f"{_against(start, file)}:{function}"
    return resolved


def as_started(cfg: RunConfig) -> RunConfig:
    """A resumed run's config with its relative paths meant as where the run was first started, wherever this resume
    runs from (a config already made absolute comes back as it was)."""
    start = run_start_dir(cfg.run_dir)
    if start is None:
        return cfg
    settings = cfg.model_dump(mode="json")
    resolved = resolve_run_paths(settings, start)
    if resolved != settings and not start.is_dir():
        raise UserError(f"--resume: the run was started in {start} (as {cfg.run_dir / PROCESS} records) and its relative "
                        "paths are read from there, but that folder is gone; name the files where they are now, by absolute "
                        "path (--data /path/to/data, and --val or --model as needed), or put the folder back")
    return RunConfig.model_validate(resolved)
