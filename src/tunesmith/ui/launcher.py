"""New runs from the page: the form's values made into a validated config, a preview of the data, and
`tunesmith train` started, stopped and resumed as a process of its own.

The form holds every config key (`config.config_keys`, the source of `tunesmith init` and the README table);
only the values changed from their defaults become overrides, validated by `load_config` as `--set` is.
Paths in the form are read relative to the runs folder and must stay inside it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field

import yaml

from ..config import ConfigKey, RunConfig, config_keys, load_config, parse_override
from ..errors import ConfigError, UserError
from ..run_directory import has_checkpoint, is_run_dir, mark_run_dir, read_process, run_state, training_pid
from .runs import CONSOLE_LOG, LAUNCH_CONFIG, RunsFolder

PATH_KEYS = ("model.name", "data.train", "data.val", "monitor.general_probe")  # named relative to the runs folder
SET_BY_THE_PAGE = ("output.dir", "output.name")  # the run's folder is the runs folder and the run's name
GENERAL_PROBE_WORDS = ("auto", "none")
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def form_keys() -> list[ConfigKey]:
    return [key for key in config_keys() if key.key not in SET_BY_THE_PAGE]


def _parsed(key: str, text: str):
    return parse_override(f"{key}={text}")[1]


@dataclass
class Draft:
    """A run as the form describes it: its name and the settings changed from the defaults."""

    name: str
    changed: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_form(cls, values: dict[str, str]) -> "Draft":
        name = str(values.get("run_name", "")).strip()
        defaults = {key.key: key.default_text for key in form_keys()}
        changed = {key: _parsed(key, str(text)) for key, text in values.items()
                   if key in defaults and str(text).strip() != defaults[key]}
        for key in ("data.train", "data.val"):  # one path typed alone, as --data takes it
            if isinstance(changed.get(key), str):
                changed[key] = [changed[key]]
        return cls(name, changed)


class Launcher:
    """Starts `tunesmith train` for the page, and only that: the process is this Python running tunesmith's own CLI."""

    def __init__(self, folder: RunsFolder):
        self.folder = folder
        self.processes: dict[str, subprocess.Popen] = {}

    def _inside(self, text: str, key: str) -> str:
        try:
            return str(self.folder.inside(text))
        except UserError as exc:
            raise ConfigError([f"{key}: {exc}"]) from None

    def _local_paths(self, changed: dict) -> dict:
        """The form's paths as absolute paths inside the runs folder; a model that is not a path there stays a name."""
        resolved = dict(changed)
        for key in PATH_KEYS:
            value = changed.get(key)
            if key == "model.name" and isinstance(value, str):
                looks_local = value.startswith(("/", ".", "~")) or (self.folder.root / value).exists()
                resolved[key] = self._inside(value, key) if looks_local else value
            elif key == "monitor.general_probe" and isinstance(value, str) and value not in GENERAL_PROBE_WORDS:
                resolved[key] = self._inside(value, key)
            elif key in ("data.train", "data.val") and isinstance(value, list):
                resolved[key] = [self._source_inside(item, key) for item in value]
        return resolved

    def _source_inside(self, item, key: str):
        if isinstance(item, dict) and "path" in item:
            paths = item["path"] if isinstance(item["path"], list) else [item["path"]]
            inside = [self._inside(str(p), key) for p in paths]
            return {**item, "path": inside if isinstance(item["path"], list) else inside[0]}
        return self._inside(str(item), key)

    def config(self, draft: Draft) -> RunConfig:
        """The validated config of a new run, with the same messages as the command line's."""
        if not RUN_NAME.fullmatch(draft.name):
            raise ConfigError(["run name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"])
        run_dir = self.folder.inside(draft.name)
        overrides = list(self._local_paths(draft.changed).items()) + [("output.dir", str(run_dir))]
        cfg = load_config(None, overrides)
        if not cfg.data.train:
            raise ConfigError(["data.train: name the training data, a file or folder inside the runs folder, e.g. data/notes.jsonl"])
        return cfg

    def preview(self, draft: Draft, count: int = 3) -> dict:
        """What `tunesmith prepare --show` prints: the data report's summary and the first training examples, marked."""
        from ..preparation import prepare, preview

        cfg = self.config(draft)
        prepared = prepare(cfg)
        return {"lines": prepared.summary_lines(), "examples": preview(cfg, prepared, count)}

    def start(self, draft: Draft) -> str:
        cfg = self.config(draft)
        run_dir = cfg.run_dir
        if run_dir.exists():
            raise UserError(f"{draft.name}: a folder of that name is already in the runs folder; pick another run name")
        mark_run_dir(run_dir)
        (run_dir / LAUNCH_CONFIG).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        self._spawn(draft.name, ["train", str(run_dir / LAUNCH_CONFIG), "--out", str(run_dir)])
        return draft.name

    def resume(self, name: str) -> None:
        run_dir = self.folder.run_dir(name)
        if self.is_running(name):
            raise UserError(f"{name} is running; stop it before resuming it")
        if run_state(run_dir) == "finished":
            raise UserError(f"{name} has finished; start a new run to train further")
        if not has_checkpoint(run_dir):
            raise UserError(f"{name} stopped before its first checkpoint, so there is nothing to resume; start it again as a new run")
        self._spawn(name, ["train", "--out", str(run_dir), "--resume"])

    def stop(self, name: str) -> None:
        """The signal Ctrl-C sends: the run finishes its step, writes a checkpoint and exits."""
        run_dir = self.folder.run_dir(name)
        pid = training_pid(read_process(run_dir))
        if pid is None and self.starting(name):
            pid = self.processes[name].pid  # still starting: the signal ends it before it has trained
        if pid is None:
            raise UserError(f"{name} is not running")
        os.kill(pid, signal.SIGINT)

    def is_running(self, name: str) -> bool:
        """Training, or launched and not yet recorded; a process that recorded its end is only exiting."""
        return training_pid(read_process(self.folder.run_dir(name))) is not None or self.starting(name)

    def starting(self, name: str) -> bool:
        """Launched from this page and alive, but not yet recorded as training (Python still loading tunesmith)."""
        launched = self.processes.get(name)
        return launched is not None and launched.poll() is None and read_process(self.folder.inside(name)).get("pid") != launched.pid

    def _spawn(self, name: str, arguments: list[str]) -> None:
        run_dir = self.folder.inside(name)
        if not is_run_dir(run_dir):
            raise UserError(f"{name}: not a tunesmith run")
        with (run_dir / CONSOLE_LOG).open("ab") as log:
            log.write(f"$ tunesmith {' '.join(arguments)}\n".encode())
            log.flush()
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "tunesmith", *arguments], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.folder.root, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)

    def reap(self) -> None:
        """Collect the exit status of launched processes that ended, so none lingers as a zombie."""
        for process in self.processes.values():
            process.poll()


__all__ = ["Draft", "Launcher", "form_keys"]
