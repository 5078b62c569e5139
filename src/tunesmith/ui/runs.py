"""The runs folder as the web page reads it: every run's row, one run's details, new metric rows as they are
written, and two or more runs side by side. Nothing here writes; every path is checked to lie inside the folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from codecs import BOM_UTF8
from stat import S_ISREG

from ..errors import UserError
from ..rundir.folder import (CONFIG_FILE, DATA_META, DATA_REPORT, MARKER, METRICS_FILE, PREPARED_META, PROCESS, REPORT_HTML,
                             SAMPLES_FILE, SUMMARY_FILE, config_section, has_checkpoint, has_step, is_run_dir,
                             read_json_object, read_sample_rows, read_yaml_object)
from ..rundir.process import run_state
from ..tasks import task_view
from ..tasks.view import TaskView

LAUNCH_CONFIG = "launch.yaml"  # the config a run started from the page was launched with, before config.yaml exists
CONSOLE_LOG = "console.log"  # the output of a run the page launched
SEARCH_DEPTH = 3  # runs may be grouped in folders: runs/<experiment>/<run>
IDENTITY_KEYS = {"output.dir", "output.name"}  # always differ between runs: the run's own folder, not a setting


class Outside(UserError):
    """A path that leaves the runs folder."""


class NotARun(UserError):
    pass


@dataclass
class RunRow:
    name: str
    task: str
    model: str
    method: str
    state: str
    steps: int
    total_steps: int | None
    metric: str  # the task's headline metric, e.g. "val perplexity"
    metric_key: str  # its name in metrics.jsonl, e.g. "val_ppl"
    base: float | None
    best: float | None
    higher_is_better: bool
    tokens_per_s: float | None
    started: str

    def as_dict(self) -> dict:
        return asdict(self)


def _signature(path: Path) -> tuple[int, int] | None:
    """A file's size and time, or None where there is no readable file (a folder in its place, say)."""
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_size, found.st_mtime_ns) if S_ISREG(found.st_mode) else None


def flatten(config: dict) -> dict:
    """A config's sections as dotted keys, as `--set` names them: {"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}."""
    flat = {}
    for section, values in config.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            flat[str(section)] = values  # a damaged config's key may be a number
    return flat


class RunsFolder:
    """The runs under one folder; file reads are cached by size and modification time, so a refresh costs little."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._cache: dict[Path, tuple[tuple[int, int] | None, dict]] = {}
        self._metrics: dict[Path, tuple[int, int, list[dict]]] = {}

    def inside(self, relative: str) -> Path:
        """`relative` as a path under the root, symbolic links followed; anything that leaves the root is refused.

        The one check every path the page reads, serves or hands to training goes through. A name the file system
        cannot hold (too long, a loop of links) is simply not there.
        """
        if "\x00" in relative:
            raise Outside(f"{relative!r}: not a path")
        shown = relative if len(relative) <= 200 else relative[:200] + "..."
        try:
            path = (self.root / relative).resolve()
            os.lstat(path)
        except FileNotFoundError:
            pass  # a path still to be made (a new run's folder)
        except (OSError, RuntimeError):
            raise NotARun(f"{shown}: no such file or run in the runs folder") from None
        if path != self.root and self.root not in path.parents:
            raise Outside(f"{shown}: outside the runs folder {self.root}; the page reads and writes only inside it")
        return path

    def own(self, run_dir: Path, name: str) -> Path | None:
        """A file of a run as the page reads it: through `inside`, so one that leads out of the folder reads as missing."""
        try:
            return self.inside(str(run_dir / name))
        except UserError:
            return None

    def first_leaving(self, folder: Path) -> Path | None:
        """The first file or folder under `folder` that leads out of the runs folder by a symbolic link, if any."""
        return next((path for path in folder.rglob("*") if self.own(path.parent, path.name) is None), None)

    def run_dir(self, name: str) -> Path:
        path = self.inside(name)
        if not is_run_dir(path):
            raise NotARun(f"{name}: no tunesmith run of that name in {self.root}")
        return path

    def names(self) -> list[str]:
        """The runs in the folder and its subfolders (a run's own folders are not searched); a link that leads out of the
        folder is left out, as everything outside it is."""
        return self.find(lambda folder: (folder / MARKER).is_file(), SEARCH_DEPTH)

    def find(self, matches, depth: int) -> list[str]:
        """The folders under the root, `depth` levels down, for which `matches(folder)` holds (not searched further)."""
        found: list[str] = []

        def walk(folder: Path, level: int) -> None:
            try:
                with os.scandir(folder) as entries:  # the names and kinds in one pass, even beside a folder of data files
                    children = sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))
            except OSError:
                return
            for child in children:
                relative = child.relative_to(self.root).as_posix()
                if matches(child):
                    with contextlib.suppress(Outside):
                        self.inside(relative)
                        found.append(relative)
                elif level < depth:
                    walk(child, level + 1)

        walk(self.root, 1)
        return found

    def _cached(self, path: Path | None, read) -> dict:
        if path is None:
            return {}
        signature = _signature(path)
        held = self._cache.get(path)
        if held is not None and held[0] == signature:
            return held[1]
        value = read(path) if signature is not None else {}
        self._cache[path] = (signature, value)
        return value

    def config(self, run_dir: Path) -> dict:
        saved = self._cached(self.own(run_dir, CONFIG_FILE), read_yaml_object)
        return saved or self._cached(self.own(run_dir, LAUNCH_CONFIG), read_yaml_object)

    def summary(self, run_dir: Path) -> dict:
        return self._cached(self.own(run_dir, SUMMARY_FILE), read_json_object)

    def process(self, run_dir: Path) -> dict:
        """process.json: the training process's pid while it runs, how it ended once it has."""
        path = self.own(run_dir, PROCESS)
        return read_json_object(path) if path else {}

    def new_metrics(self, name: str, offset: int) -> dict:
        """A run's metric rows written past byte `offset` (see `metrics_since`)."""
        return metrics_since(self.own(self.run_dir(name), METRICS_FILE), offset)

    def metrics(self, run_dir: Path) -> list[dict]:
        """metrics.jsonl's rows (numbers only); a file that grew is read from where the last read ended."""
        path = self.own(run_dir, METRICS_FILE)
        if path is None:
            return []
        try:
            stat = path.stat()
        except OSError:
            return []
        inode, offset, rows = self._metrics.get(path, (None, 0, []))
        if inode != stat.st_ino or offset > stat.st_size:  # replaced or cut back (a resume, a rollback): read it anew
            offset, rows = 0, []
        if offset < stat.st_size:
            new = metrics_since(path, offset)
            offset, rows = new["offset"], rows + new["rows"]
            self._metrics[path] = (stat.st_ino, offset, rows)
        return rows

    def progress(self, run_dir: Path, summary: dict, view: TaskView) -> tuple[int, float | None, float | None, float | None]:
        """Steps, the headline metric at the base and at the best step, and tokens/s: from summary.json once the run
        has finished (a long metrics.jsonl is not read for the table), else from the metrics so far."""
        key, _, higher = view.headline
        if summary:
            named = view.summary_headline or key
            best = summary.get(f"best_{named}", summary.get(named))
            return summary.get("steps", 0), summary.get(f"base_{named}"), best, summary.get("tokens_per_s")
        metrics = self.metrics(run_dir)
        evaluations = [(row["step"], row[key]) for row in metrics if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
        base = next((value for step, value in evaluations if step == 0), None)
        best = (max if higher else min)(value for _, value in evaluations) if evaluations else None
        speeds = [row["tokens_per_s"] for row in metrics[-20:] if isinstance(row.get("tokens_per_s"), (int, float))]
        steps = max((row.get("step", 0) for row in metrics), default=0)
        return steps, base, best, sum(speeds) / len(speeds) if speeds else None

    def row(self, name: str) -> RunRow:
        run_dir = self.run_dir(name)
        config, summary, record = self.config(run_dir), self.summary(run_dir), self.process(run_dir)
        view = view_of(summary, config)
        key, label, higher = view.headline
        steps, base, best, speed = self.progress(run_dir, summary, view)
        started = record.get("started") or self._cached(self.own(run_dir, MARKER), read_json_object).get("created")
        if isinstance(started, (int, float)):
            started = _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds")
        model = config_section(config, "model")
        return RunRow(name=name, task=view.name, model=str(model.get("name", "")), method=str(model.get("method", "full")),
                      state=run_state(run_dir, record), steps=steps, total_steps=record.get("total_steps"), metric=label,
                      metric_key=key, base=base, best=best, higher_is_better=higher, tokens_per_s=speed, started=str(started or ""))

    def rows(self) -> list[RunRow]:
        rows = [self.row(name) for name in self.names()]
        return sorted(rows, key=lambda row: row.started, reverse=True)

    @staticmethod
    def _distill(summary: dict) -> list:
        """A distilled run's teacher and student side by side; none for a summary that does not hold them whole."""
        from ..report.writer import distill_rows

        try:
            return distill_rows(summary.get("distill"))
        except (KeyError, TypeError, AttributeError):
            return []

    def detail(self, name: str) -> dict:
        """Everything one run's page shows besides its curves."""
        from ..data.report import summary_lines
        from ..report.benchmarks import benchmark_rows
        from ..report.writer import samples_before_after

        run_dir = self.run_dir(name)
        summary = self.summary(run_dir)
        report = self._data_file(run_dir, summary, DATA_REPORT, DATA_REPORT)
        meta = self._data_file(run_dir, summary, DATA_META, PREPARED_META)
        try:
            data_lines = summary_lines(report, meta) if report and meta else []
        except (KeyError, TypeError):  # a report from an older version of tunesmith
            data_lines = []
        configs = [self.own(run_dir, n) for n in (CONFIG_FILE, LAUNCH_CONFIG)]
        config_path = next((path for path in configs if path and path.is_file()), None)
        samples = self.own(run_dir, SAMPLES_FILE)
        return {
            "row": self.row(name),
            "summary": summary,
            "findings": self.findings(name),
            "samples": samples_before_after(read_sample_rows(samples) if samples else [], summary.get("best_step")),
            "data_lines": data_lines,
            "data_warnings": report.get("warnings", []),
            "config": config_path.read_text(encoding="utf-8", errors="replace") if config_path else "",
            "has_report": self._is_own_file(run_dir, REPORT_HTML),
            "has_final": self._is_own_file(run_dir, "final/config.json"),
            "has_checkpoint": has_checkpoint(run_dir),
            "process": self.process(run_dir),
            "try_it": view_of(summary, self.config(run_dir)).try_it,
            "benchmarks": benchmark_rows(summary),
            "distill": self._distill(summary),
        }

    def _is_own_file(self, run_dir: Path, name: str) -> bool:
        path = self.own(run_dir, name)
        return path is not None and path.is_file()

    def _data_file(self, run_dir: Path, summary: dict, own: str, cached: str) -> dict:
        """The run's copy of a data file, or for a run from before copies were kept, the data cache's, where that
        cache lies inside the folder."""
        path = self.own(run_dir, own)
        if (path is None or not path.is_file()) and summary.get("data_dir"):
            path = self.own(Path(str(summary["data_dir"])), cached)
        return read_json_object(path) if path else {}

    def findings(self, name: str) -> list[dict]:
        from ..diagnose.rules import diagnose_run

        run_dir = self.run_dir(name)
        read = [self.own(run_dir, n) for n in (METRICS_FILE, CONFIG_FILE, SUMMARY_FILE)]  # what diagnose_run reads
        if None in read or not read[0].is_file():
            return []
        return [f.as_dict() for f in diagnose_run(run_dir)]

    def compare(self, names: list[str]) -> dict:
        """Two or more runs: their rows, summaries, curves, and only the config keys whose values differ."""
        if len(names) < 2:
            raise UserError("pick two or more runs to compare")
        dirs = [self.run_dir(name) for name in names]
        configs = [flatten(self.config(d)) for d in dirs]
        keys = sorted(set().union(*configs) - IDENTITY_KEYS)
        columns = [(key, [config.get(key) for config in configs]) for key in keys]
        differing = [(key, values) for key, values in columns  # as JSON text, so 1 and true differ; key order is the file's
                     if len({json.dumps(value, default=str) for value in values}) > 1]
        return {"rows": [self.row(name) for name in names], "differing": differing,
                "summaries": [self.summary(d) for d in dirs]}

    def log_tail(self, name: str, limit: int = 8000) -> str:
        path = self.own(self.run_dir(name), CONSOLE_LOG)
        if path is None or not path.is_file():  # a FIFO would hold the request's thread for good
            return ""
        try:
            with path.open("rb") as handle:
                handle.seek(max(0, path.stat().st_size - limit))
                return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""


def view_of(summary: dict, config: dict):
    return task_view(summary.get("task") or config.get("task"))


def metrics_since(path: Path | None, offset: int) -> dict:
    """A metrics.jsonl's whole lines from byte `offset` on, and the offset after them (none for a missing file).

    A file shorter than `offset` was rewritten (a resume or a rollback drops rows past its step): then every row
    comes back, with `reset` set, so the page redraws rather than appends.
    """
    signature = _signature(path) if path else None
    if signature is None:
        return {"rows": [], "offset": 0, "reset": offset > 0}
    size = signature[0]
    reset = size < offset
    start = 0 if reset else offset
    with path.open("rb") as handle:
        handle.seek(start)
        chunk = handle.read(size - start)
    whole = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next call
    whole = whole.removeprefix(BOM_UTF8) if start == 0 else whole
    rows = []
    for line in whole.decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and has_step(row):
            rows.append({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
    return {"rows": rows, "offset": start + len(whole), "reset": reset}


__all__ = ["CONSOLE_LOG", "LAUNCH_CONFIG", "NotARun", "Outside", "RunRow", "RunsFolder", "flatten", "metrics_since"]
