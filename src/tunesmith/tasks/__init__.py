"""The kinds of fine-tuning, each a `TaskKind` and the `Task` it builds (see `base.py`) and a `TaskView` (see `view.py`),
and the spec saved with a model.

A new task is one module with its kind, its run-time task and its view, and one line in `TASKS` and `VIEWS`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError, UserError
from .base import Task, TaskKind
from .chat import ChatKind, ChatView
from .classify import ClassifyKind, ClassifyView
from .grpo import GrpoKind, GrpoView
from .lm import LmKind, LmView
from .preference import PreferenceKind, PreferenceView
from .reward import RewardKind, RewardView
from .view import TaskView

TASKS: dict[str, TaskKind] = {kind.name: kind for kind in (LmKind(), ChatKind(), ClassifyKind(), PreferenceKind(), RewardKind(), GrpoKind())}
VIEWS: dict[str, TaskView] = {view.name: view for view in (LmView(), ChatView(), ClassifyView(), PreferenceView(), RewardView(), GrpoView())}
TASK_FILE = "tunesmith_task.json"


def task_summaries() -> dict[str, str]:
    """Each task's name and what it learns: the config's `task` key as `init`, the docs and the web page list it."""
    return {name: kind.learns for name, kind in TASKS.items()}


def task_kind(cfg: RunConfig) -> TaskKind:
    """The config's task, for what the config alone decides (checks, preparation, the tokenizer, planning)."""
    kind = TASKS.get(cfg.task)
    if kind is None:
        raise ConfigError([f"task: {cfg.task!r} is not a task tunesmith has; use one of {', '.join(TASKS)}"])
    return kind


def build_task(cfg: RunConfig, meta: dict, reference=None) -> Task:
    """The run-time task, from the settled config (`TaskKind.settle`), the prepared data's meta and, where the task
    needs one, its reference (`TaskKind.reference`)."""
    return task_kind(cfg).build(cfg, meta, reference)


def why_unread(key: str, cfg: RunConfig, teacher_varies: bool = False) -> str | None:
    """Why a run of `cfg` never reads the setting `key` (a section only other tasks read, as grpo.group_size for a
    language model; distillation without a teacher, unless `teacher_varies`), or None when it reads it."""
    kind, section = task_kind(cfg), key.split(".", 1)[0]
    readers = [k for k in TASKS.values() if section == k.section or section in k.also_reads]
    if readers and kind not in readers:
        return f"read only by another task, and the config trains task {kind.name}"
    if section == "distill" and key != "distill.teacher" and not cfg.distill.teacher and not teacher_varies:
        return "read only with a teacher, and the config names none in distill.teacher"
    return None


def task_view(name: str | None) -> TaskView:
    """The view of the task a summary or saved spec names (plain language modelling when it names none)."""
    return VIEWS.get(name if isinstance(name, str) and name else "lm", VIEWS["lm"])  # a damaged file's name: the default


def write_task(directory: Path, spec: dict) -> None:
    """What a later `chat`, `predict`, `serve` or `eval` needs to use the model the way it was trained."""
    (directory / TASK_FILE).write_text(json.dumps(spec, indent=2))


def read_task(directory: Path) -> dict:
    """The task a saved model was trained for ({"task": "lm"} for a model without the file); a damaged file is refused in
    one line naming it."""
    path = Path(directory) / TASK_FILE
    if not path.is_file():
        return {"task": "lm"}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None
    try:
        spec = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: damaged ({str(exc).splitlines()[0]}); it says which task the model was trained for: "
                        "restore it from the run, or train the run again") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
        raise UserError(f"{path}: damaged (not an object naming its task); it says which task the model was trained for: "
                        "restore it from the run, or train the run again")
    problem = next((f"its {key} holds {str(spec[key])[:40]!r}" for key, fits in SPEC_FIELDS.items()
                    if key in spec and not fits(spec[key])), None) or _classifier_problem(spec)
    if problem:
        raise UserError(f"{path}: damaged ({problem}); it says how the model was trained: restore it from the run, or train "
                        "the run again")
    return spec


def _texts(value, keys=False) -> bool:
    items = value.items() if keys else enumerate(value)
    return all(isinstance(v, str) and (not keys or isinstance(k, str)) for k, v in items)


SPEC_FIELDS = {  # what a key of a task file holds where a task writes it (`Task.spec`)
    "labels": lambda v: isinstance(v, list) and len(v) >= 1 and _texts(v) and len(set(v)) == len(v),
    "verbalizers": lambda v: isinstance(v, dict) and _texts(v, keys=True),
    "fields": lambda v: isinstance(v, dict) and _texts(v, keys=True),
    "block_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 10**7,
    **{key: lambda v: isinstance(v, str) for key in ("method", "prompt", "text_field", "label_field", "end_of_turn", "label")},
    "system_prompt": lambda v: v is None or isinstance(v, str),
    "grpo": lambda v: isinstance(v, dict),
}


def _classifier_problem(spec: dict) -> str | None:
    if "verbalizers" not in spec:  # not a classifier's, or one that `load_classifier` names as not a classifier
        return None
    missing = [key for key in ("labels", "method", "prompt") if key not in spec]
    if missing:
        return f"no {missing[0]}"
    if spec["method"] not in ("head", "generative"):
        return f"its method is {spec['method'][:40]!r}"
    absent = [label for label in spec["labels"] if label not in spec["verbalizers"]]
    return f"no label word for {absent[0][:40]!r}" if absent else None


def saved_task(model_dir: Path | None, cfg: RunConfig, spec_name: str) -> tuple[TaskKind, RunConfig, dict | None]:
    """The task to evaluate a model with, the config to evaluate it under, and its saved spec: the task it was trained
    for, or, for a plain model, the config's.

    A model trained for a task keeps it (a chat model is measured on assistant turns); asking for a task the
    saved model cannot do (classify with a language model) is a user error.
    """
    saved = read_task(model_dir) if model_dir is not None and Path(model_dir).is_dir() else {"task": "lm"}
    if saved["task"] != "lm":
        kind = TASKS.get(saved["task"], TASKS["lm"])
        return kind, kind.for_saved(saved, cfg.model_copy(update={"task": kind.name})), saved
    kind = task_kind(cfg)
    if kind.needs_saved_spec:
        raise UserError(f"{spec_name} is not a trained {kind.name} model; evaluate a run trained with --task {kind.name}")
    return kind, cfg, None


__all__ = ["TASKS", "TASK_FILE", "VIEWS", "Task", "TaskKind", "TaskView", "build_task", "read_task", "saved_task",
           "task_kind", "task_summaries", "task_view", "why_unread", "write_task"]
