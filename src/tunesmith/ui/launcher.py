"""New runs from the page: the form's values made into a validated config, a preview of the data, and
`tunesmith train` started, stopped and resumed as a process of its own.

The form holds every config key (`config.reference.config_keys`, the source of `tunesmith init` and the docs' table);
only the values changed from their defaults become overrides, validated by `load_config` as `--set` is.
Paths in the form are read relative to the runs folder and must stay inside it (`config_paths`). The page trains
a few runs at a time, at most `max_running`: on a shared machine each more only slows the others.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import RunConfig, load_config, parse_override
from ..config.reference import ConfigKey, config_keys
from ..errors import ConfigError, UserError
from ..rundir.folder import (CONFIG_FILE, LOCK, as_started, check_saved_config, has_checkpoint, is_run_dir, mark_run_dir,
                             read_json_object, run_start_dir)
from ..rundir.process import run_state, training_pid
from .config_paths import confine_paths
from .runs import CONSOLE_LOG, LAUNCH_CONFIG, RunsFolder

SET_BY_THE_PAGE = ("output.dir", "output.name")  # the run's folder is the runs folder and the run's name
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CORES_PER_RUN = 4


class Busy(UserError):
    """The page already trains as many runs as it may at once."""


def form_keys() -> list[ConfigKey]:
    from ..tasks import task_summaries

    return [key for key in config_keys(task_summaries()) if key.key not in SET_BY_THE_PAGE]


def default_max_running() -> int:
    """One training per four cores, at least one: a training uses several cores, and more at once only slows each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // CORES_PER_RUN)


def _parsed(key: str, text: str):
    return parse_override(f"{key}={text}")[1]


@dataclass
class Draft:
    """A run as the form describes it: its name and the settings changed from the defaults."""

    name: str
    changed: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_form(cls, values: dict[str, str]) -> "Draft":
        name = str(values.get("run_name") or "").strip()
        defaults = {key.key: key.default_text for key in form_keys()}
        values = {key: "" if text is None else text for key, text in values.items()}  # a JSON null is a field left blank
        changed = {key: _parsed(key, str(text)) for key, text in values.items()
                   if key in defaults and str(text).strip() != defaults[key]}
        return cls(name, changed)


class Launcher:
    """Starts `tunesmith train` for the page, and only that: the process is this Python running tunesmith's own CLI."""

    def __init__(self, folder: RunsFolder, max_running: int | None = None):
        self.folder = folder
        self.max_running = max_running or default_max_running()
        self.processes: dict[str, subprocess.Popen] = {}
        self.spawning = threading.Lock()  # check-then-spawn as one step: the endpoints run in a thread pool

    def config(self, draft: Draft) -> RunConfig:
        """The validated config of a new run, with the same messages as the command line's, its paths inside the folder."""
        if not RUN_NAME.fullmatch(draft.name):
            raise ConfigError(["run name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"])
        run_dir = self.folder.inside(draft.name)
        cfg = load_config(None, [*draft.changed.items(), ("output.dir", str(run_dir))])
        if not cfg.data.train:
            raise ConfigError(["data.train: name the training data, a file or folder inside the runs folder, e.g. data/notes.jsonl"])
        from ..preparation import check_block_fits, tokenizer_model
        from ..tasks import task_kind

        confined = confine_paths(cfg, self.folder)  # before the task's checks, which read the files a config names
        task_kind(confined).check(confined)  # what `tunesmith train` refuses before it makes a folder, the page refuses too
        try:
            resolved = tokenizer_model(confined)
        except UserError:  # a model not found from here is named by the run, as the command line's train names it
            return confined
        check_block_fits(confined, resolved)
        return confined

    def preview(self, draft: Draft, count: int = 3) -> dict:
        """What `tunesmith prepare --show` prints: the data report's summary and the first training examples, marked."""
        from ..preparation import prepare, preview

        cfg = self.config(draft)
        prepared = prepare(cfg)
        return {"lines": prepared.summary_lines(), "examples": preview(cfg, prepared, count)}

    def start(self, draft: Draft) -> str:
        cfg = self.config(draft)
        run_dir = cfg.run_dir
        with self.spawning:
            self._check_room()
            if run_dir.exists():
                raise UserError(f"{draft.name}: a folder of that name is already in the runs folder; pick another run name")
            mark_run_dir(run_dir)
            (run_dir / LAUNCH_CONFIG).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            self._spawn(draft.name, ["train", str(run_dir / LAUNCH_CONFIG), "--out", str(run_dir)], self.folder.root)
        return draft.name

    def resume(self, name: str) -> None:
        run_dir = self.folder.run_dir(name)
        with self.spawning:
            if self.is_running(name):
                raise UserError(f"{name} is running; stop it before resuming it")
            if run_state(run_dir) in ("finished", "pruned"):
                raise UserError(f"{name} has finished; start a new run to train further")
            if not has_checkpoint(run_dir):
                raise UserError(f"{name} stopped before its first checkpoint, so there is nothing to resume; start it again as a new run")
            self._check_wholly_inside(name, run_dir)
            check_saved_config(run_dir, name)
            self._check_reads_inside(name, run_dir)
            self._check_room()
            self._spawn(name, ["train", "--out", str(run_dir), "--resume"], self._started_in(run_dir))

    def _check_wholly_inside(self, name: str, run_dir: Path) -> None:
        """A resumed run writes into its own files; one that is a link out of the folder (a run unpacked from an
        archive, say) would have training write outside it."""
        leaving = self.folder.first_leaving(run_dir)
        if leaving is not None:
            raise UserError(f"{name}: {leaving.relative_to(run_dir)} leads outside the runs folder (a symbolic link); "
                            "replace it with the file itself, or resume the run with `tunesmith train --out RUN --resume`")

    def _check_reads_inside(self, name: str, run_dir: Path) -> None:
        """A run started on the command line may read data or a model from anywhere; the page resumes it only when
        what it reads, meant as where it was started, lies inside the folder, as for a run started from the page."""
        try:
            confine_paths(as_started(load_config(run_dir / CONFIG_FILE, [("output.dir", str(run_dir))])), self.folder)
        except ConfigError as exc:
            raise UserError(f"{name}: {exc.problems[0]}; the page resumes only runs that read inside its folder, so resume "
                            f"this one from the command line: tunesmith train --out {shlex.quote(str(run_dir))} --resume") from None

    def running(self) -> list[str]:
        """The folder's runs that train now, started from this page or from the command line: all share the machine.
        A process that recorded its end is only exiting and leaves room, so Resume works right after Stop."""
        names = set(self.folder.names())
        unlisted = {name for name, process in self.processes.items() if process.poll() is None and name not in names}
        return sorted(unlisted | {name for name in names if self.is_running(name)})

    def _check_room(self) -> None:
        running = self.running()
        if len(running) >= self.max_running:
            raise Busy(f"{', '.join(running)} {'is' if len(running) == 1 else 'are'} training, as many as this page lets train at "
                       f"once (tunesmith ui --max-runs {self.max_running}); wait for one to end, or stop one")

    def _started_in(self, run_dir: Path) -> Path:
        """The folder the run was first started in, as its process recorded it: the relative paths of a run started
        on the command line (its data, a local model) are read from there again. Else the runs folder, where the
        page starts its own runs."""
        recorded = run_start_dir(run_dir)
        return recorded if recorded is not None and recorded.is_dir() else self.folder.root

    def stop(self, name: str) -> None:
        """The signal Ctrl-C sends: the run finishes its step, writes a checkpoint and exits."""
        run_dir = self.folder.run_dir(name)
        pid = training_pid(self.folder.process(run_dir))
        if pid is None and self.starting(name):
            pid = self.processes[name].pid  # still starting: the signal ends it before it has trained
        if pid is None:
            raise UserError(f"{name} is not running")
        os.kill(pid, signal.SIGINT)

    def is_running(self, name: str) -> bool:
        """Training (recorded, or holding the run's lock), or launched and not yet recorded; a process that recorded
        its end is only exiting."""
        run_dir = self.folder.run_dir(name)
        lock = self.folder.own(run_dir, LOCK)
        holder = training_pid(read_json_object(lock)) if lock else None
        return training_pid(self.folder.process(run_dir)) is not None or holder is not None or self.starting(name)

    def starting(self, name: str) -> bool:
        """Launched from this page and alive, but not yet recorded as training (Python still loading tunesmith)."""
        launched = self.processes.get(name)
        return launched is not None and launched.poll() is None and self.folder.process(self.folder.inside(name)).get("pid") != launched.pid

    def _spawn(self, name: str, arguments: list[str], cwd: Path) -> None:
        run_dir = self.folder.inside(name)
        if not is_run_dir(run_dir):
            raise UserError(f"{name}: not a tunesmith run")
        with (run_dir / CONSOLE_LOG).open("ab") as log:
            log.write(f"$ tunesmith {' '.join(arguments)}\n".encode())
            log.flush()
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "tunesmith", *arguments], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)

    def reap(self) -> None:
        """Collect the exit status of launched processes that ended, so none lingers as a zombie."""
        for process in self.processes.values():
            process.poll()


__all__ = ["Busy", "Draft", "Launcher", "default_max_running", "form_keys"]
