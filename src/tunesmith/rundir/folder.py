"""The run directory as a place on disk: the marker that says a folder is a tunesmith run, the checks made before
a run writes into a folder, the folder its relative paths mean something in, and reading its files back however a
killed process or a hand edit left them. The process training in it is `process`'s.
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import os
from pathlib import Path

from ..config import PROBE_WORDS, RunConfig, benchmark_is_path, build_config, read_config_file, read_yaml_leniently
from ..errors import ConfigError, UserError

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


def check_apart_from_data(run_dir: Path, data_paths: list[str]) -> None:
    """Refuse, even with --force, a run folder that is a data folder, lies inside one, holds the data, or whose files a
    data glob would match: its files (metrics.jsonl, samples.jsonl, report.md) would be read as training text the next
    time, and a resume would then find other validation text."""
    run = run_dir.expanduser().resolve()
    for given in data_paths:
        if _reads_into(given, run):
            raise UserError(f"--out {run_dir} and the data {given} overlap: the run's own files would be read as training "
                            "text the next time that data is; pick an --out outside the data")


def split_glob(parts: list[str] | tuple[str, ...]) -> tuple[Path, list[str]]:
    """A path's parts as a glob's folder (the parts before the first wildcard, or '.') and the pattern after it (empty
    for a plain path)."""
    first = next((index for index, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    return (Path(*parts[:first]) if first else Path(".")), list(parts[first:])


def _reads_into(given: str, run: Path) -> bool:
    """Whether the data named by `given` (a file, a folder or a glob) overlaps the run folder `run`."""
    import fnmatch

    base, pattern = split_glob(Path(os.path.expanduser(given)).parts)
    if not base.exists():
        return False
    base = base.resolve()
    if not pattern or "**" in given:  # a file or folder, or a glob that reads anything under its folder
        return base == run or base in run.parents or run in base.parents
    if run != base and base not in run.parents:
        return False
    inside = run.relative_to(base).parts  # a glob of fixed depth reaches the run's files when the run's folders fit it
    return len(inside) < len(pattern) and all(fnmatch.fnmatch(p, q) for p, q in zip(inside, pattern))


def has_checkpoint(run_dir: Path) -> bool:
    checkpoints = run_dir / "checkpoints"
    return checkpoints.is_dir() and any(p.name.startswith("step-") and "." not in p.name for p in checkpoints.iterdir())


def _has_saved_work(run_dir: Path) -> bool:
    return has_checkpoint(run_dir) or (run_dir / "final").exists()


# an end's files: the summary first, so that a move cut short leaves the run unfinished rather than finished without its model
END_FILES = (SUMMARY_FILE, REPORT_MD, REPORT_HTML, "report_files", GENERATION_EVAL, "final-adapter", "final")


def set_aside_end(run_dir: Path, step: int) -> Path | None:
    """Move the files an earlier end wrote (final/, summary.json, the report) into `ended-at-step-N/` (N the step its
    summary gives, else `step`), for a resume that trains on: left in place, `eval`, `generate` and `export` would take
    the old model for the run's while it trains and after a crash; deleted, the user's finished model would be lost.
    Returns where they went, or None."""
    present = [name for name in END_FILES if (run_dir / name).exists() or (run_dir / name).is_symlink()]
    if SUMMARY_FILE not in present and "final" not in present:  # never ended (a report made of a crashed run is rewritten)
        return None
    ended = read_json_object(run_dir / SUMMARY_FILE).get("steps") if SUMMARY_FILE in present else None
    step = ended if isinstance(ended, int) and not isinstance(ended, bool) and 0 <= ended < 10**12 else step
    kept, n = run_dir / f"ended-at-step-{step}", 1
    while kept.is_symlink() or (kept.exists() and not kept.is_dir()) or \
            any((kept / name).exists() for name in present):  # a name taken, or an earlier move there cut short: keep both
        n += 1
        kept = run_dir / f"ended-at-step-{step}-{n}"
    kept.mkdir(exist_ok=True)
    for name in present:
        os.replace(run_dir / name, kept / name)
    return kept


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
    """A JSON file's object, or {} for a file that is missing, damaged or holds something else (a byte-order mark that an
    editor added is read past)."""
    if not path.is_file():  # a FIFO or a device would block or never end
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def check_saved_config(run_dir: Path, who: str) -> RunConfig:
    """A run's own config.yaml as its settings; refused, in one line that starts with `who`, where it cannot be read as
    them (not UTF-8 or YAML, too large, empty, not a mapping, no model.name, a value no config takes): resuming continues
    from it, so it is named as the run's, not as a user's config file."""
    path = run_dir / CONFIG_FILE
    problem, saved = None if path.is_file() else "not a regular file", {}  # a folder, a device or a link to nothing
    if problem is None:
        try:
            saved = read_config_file(path)
        except ConfigError as exc:
            problem = exc.problems[0].removeprefix(f"config file {path}: ").split("; ")[0]
    problem = problem or _damage(saved)
    if problem:
        raise UserError(f"{who}: the run's saved settings {path} are damaged ({problem}); restore the file, or start a new "
                        "run in another folder")
    try:
        return build_config(saved)
    except ConfigError as exc:
        raise UserError(f"{who}: the run's saved settings {path} hold what this tunesmith does not take: "
                        f"{'; '.join(exc.problems)}; correct it in that file, or start a new run in another folder") from None


def _damage(saved: dict) -> str | None:
    """What makes a run's saved settings unreadable as a run's, or None. Every run saves its model.name; without it a
    resumed run would start from the default model."""
    if not saved:
        return "empty"
    model = saved.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not model["name"].strip():
        return "no model.name"
    return None


def read_yaml_object(path: Path) -> dict:
    """A YAML file's mapping (safe types only), or {} for a file that is missing, damaged or holds something else: what
    the readers of a run's saved config.yaml take, which show or use what they can of a run and never fail on it."""
    if not path.is_file():  # a FIFO or a device would block or never end
        return {}
    try:
        value = read_yaml_leniently(path.read_text(encoding="utf-8-sig"))
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
    for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
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
    """Whether a metrics or samples row names its step as a whole number a run can reach (a row edited by hand may not)."""
    step = row.get("step")
    return isinstance(step, int) and not isinstance(step, bool) and 0 <= step < 10**12


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


def run_start_dir(run_dir: Path) -> Path | None:
    """The working directory the run was first started from (None for a run from before it was recorded)."""
    start = read_json_object(run_dir / PROCESS).get(START_CWD)
    return Path(start) if isinstance(start, str) and Path(start).is_absolute() else None  # as recorded: always absolute


def _against(start: Path, path: str) -> str:
    """`path` made absolute: against the home folder when it begins with `~` (so `~/m` and its expansion are one
    setting), else against `start`."""
    if path.startswith("~"):
        return os.path.expanduser(path)
    return path if Path(path).is_absolute() else str(start / path)


def _store_against(start: Path, uri: str) -> str:
    """An MLflow store named by a relative folder or a relative sqlite file, made absolute; a server stays as it is."""
    if uri.lower().startswith(SQLITE):
        rest = uri[len(SQLITE):]
        return uri if rest.startswith("/") else SQLITE + str(start / rest)
    return _against(start, uri) if ":" not in uri else uri


def resolve_run_paths(settings: dict, start: Path) -> dict:
    """`settings` (a config as a dict) with each relative path made absolute against `start`, the run's start folder.

    Data paths and a probe file always are, so that a path missing there is named where it was meant; `model.name`,
    `monitor.drift_from` and `distill.teacher` only when they name something that exists there, since each may also be
    a hub id or the embedded model's name.
    """
    resolved = json.loads(json.dumps(settings))
    data, model, monitor, distill = (resolved.get(key) or {} for key in ("data", "model", "monitor", "distill"))
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
    for section, key in ((model, "name"), (monitor, "drift_from"), (distill, "teacher")):
        name = section.get(key)
        if isinstance(name, str) and Path(_against(start, name)).exists():
            section[key] = _against(start, name)
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
    reads_from_start = resolved != resolve_run_paths(settings, start / "elsewhere")  # a relative path: `~` reads the same
    if reads_from_start and not start.is_dir():
        raise UserError(f"--resume: the run was started in {start} (as {cfg.run_dir / PROCESS} records) and its relative "
                        "paths are read from there, but that folder is gone; name the files where they are now, by absolute "
                        "path (--data /path/to/data, and --val or --model as needed), or put the folder back")
    return RunConfig.model_validate(resolved)


# what one command says about this machine or this command's trust, not about the run: a resume does not write them down
PER_COMMAND = ("model.trust_remote_code", "train.device", "train.precision", "train.compile", "train.memory_check",
               "train.peak_tflops", "train.distributed", "train.eval_batch_size")


def record_resumed_settings(run_dir: Path, cfg: RunConfig) -> list[str]:
    """Write into the run's config.yaml the settings a resume changed (`--max-steps`, `--epochs`, ...; those that may
    not change were refused before), so that a later resume, the report and the page go on with them; every other value
    stays as written, relative paths included. Returns the changed keys ("train.max_steps"), none where the run has
    no config.yaml of its own."""
    import yaml

    from .durable import write_atomically

    if not (run_dir / CONFIG_FILE).is_file():
        return []
    saved = check_saved_config(run_dir, "--resume").model_dump(mode="json")
    before = saved_as_started(run_dir, saved)
    now = cfg.model_dump(mode="json")
    leaves = [(section, key) for section, values in now.items() if section != "output"
              for key in (values if isinstance(values, dict) else [None])]  # `task` is a setting of its own
    changed = [(section, key) for section, key in leaves if _leaf(before, section, key) != _leaf(now, section, key)
               and f"{section}.{key}" not in PER_COMMAND]
    for section, key in changed:
        if key is None:
            saved[section] = now[section]
        else:
            saved[section][key] = now[section][key]
    if changed:
        write_atomically(run_dir / CONFIG_FILE, yaml.safe_dump(saved, sort_keys=False))
    return [section if key is None else f"{section}.{key}" for section, key in changed]


def saved_as_started(run_dir: Path, saved: dict) -> dict:
    """A run's saved settings with their relative paths read from where the run was started, as a resume reads its own."""
    start = run_start_dir(run_dir)
    return resolve_run_paths(saved, start) if start else saved


def _leaf(settings: dict, section: str, key: str | None):
    value = settings.get(section)
    return value if key is None else (value or {}).get(key)
