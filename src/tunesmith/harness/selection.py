"""Which benchmarks to run: lm-eval task and group names, task YAML files and folders of them, checked before a model loads.

Only names need lm-eval's own index of its tasks, which takes seconds to build; files and folders alone skip it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import TASK_FILE_SUFFIXES, benchmark_is_path
from ..errors import UserError

FIND_NAMES = "`lm-eval ls tasks` lists every name; or give a task YAML file (dataset_path: json, data_files: a local file)"


@dataclass(frozen=True)
class Selection:
    """The benchmarks as lm-eval loads them: `specs` are names or YAML paths; `folders` are added to its task index."""

    specs: tuple[str, ...]
    folders: tuple[str, ...] = ()
    needs_index: bool = True  # any spec is a name from lm-eval's own tasks

    def task_manager(self):
        from lm_eval.tasks import TaskManager

        return TaskManager(include_path=list(self.folders) or None, include_defaults=self.needs_index)




def _folder_tasks(folder: Path) -> list[str]:
    """The task and group names defined by a folder's YAML files; groups alone when it has any, since they hold the tasks."""
    import yaml

    tasks, groups = [], []
    for path in sorted(folder.rglob("*.y*ml")):
        config = read_task_file(path, yaml)
        if isinstance(config, dict) and isinstance(config.get("group"), str) and "task" in config and isinstance(config["task"], list):
            groups.append(config["group"])
        elif isinstance(config, dict) and isinstance(config.get("task"), str):
            tasks.append(config["task"])
    if not tasks and not groups:
        raise UserError(f"--benchmarks {folder}: no lm-eval task YAML files (with a `task:` key) in that folder")
    return groups or tasks


def read_task_file(path: Path, yaml):
    """A task file's YAML; lm-eval's own tags (!function) are read as plain values here, since only the names matter."""

    class Lenient(yaml.SafeLoader):
        pass

    Lenient.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        with path.open(encoding="utf-8") as stream:
            return yaml.load(stream, Lenient)
    except yaml.YAMLError as exc:
        raise UserError(f"--benchmarks {path}: the task file does not parse ({' '.join(str(exc).split())})") from None
    except UnicodeDecodeError:
        raise UserError(f"--benchmarks {path}: the task file is not UTF-8 text; save it as UTF-8") from None


def _file_spec(spec: str) -> tuple[list[str], list[str]]:
    """(specs, folders) for one path: a YAML file is loaded by its path, a folder is indexed and its tasks named."""
    path = Path(os.path.expanduser(spec))
    if not path.exists():
        raise UserError(f"--benchmarks {spec}: no such task file or folder; give an lm-eval task name ({FIND_NAMES})")
    if path.is_dir():
        return _folder_tasks(path), [str(path.resolve())]
    if not spec.endswith(TASK_FILE_SUFFIXES):
        raise UserError(f"--benchmarks {spec}: a task file is an lm-eval task YAML (.yaml); name one, a folder of them, or a task")
    import yaml

    config = read_task_file(path, yaml)
    if not isinstance(config, dict) or not isinstance(config.get("task") or config.get("group"), str):
        raise UserError(f"--benchmarks {spec}: not an lm-eval task file (it needs a `task:` name); see lm-eval's new_task_guide")
    return [str(path.resolve())], []


def split_names(text: str | list[str]) -> list[str]:
    """`piqa,arc_easy` or a list of such: the benchmark names in order, each once."""
    items = [text] if isinstance(text, str) else list(text)
    names = [part.strip() for item in items for part in item.split(",") if part.strip()]
    return list(dict.fromkeys(names))


def select_benchmarks(text: str | list[str]) -> Selection:
    """Check every benchmark named; file problems are found here, unknown names when lm-eval's index is read (check_names)."""
    names = split_names(text)
    if not names:
        raise UserError(f"--benchmarks: name at least one benchmark, e.g. --benchmarks piqa,lambada_openai ({FIND_NAMES})")
    specs, folders, needs_index = [], [], False
    for name in names:
        if benchmark_is_path(name, Path.cwd()):
            more_specs, more_folders = _file_spec(name)
            specs += more_specs
            folders += more_folders
        else:
            specs.append(name)
            needs_index = True
    return Selection(tuple(dict.fromkeys(specs)), tuple(folders), needs_index)


def check_names(selection: Selection, manager) -> None:
    """An unknown name fails in one line, with the closest names lm-eval knows."""
    known = set(manager.all_tasks)
    for spec in selection.specs:
        if spec in known or Path(spec).is_file():
            continue
        close = difflib.get_close_matches(spec, manager.all_tasks, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"--benchmarks {spec}: lm-eval has no task or group of that name; {hint}{FIND_NAMES}")
