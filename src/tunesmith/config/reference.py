"""Every config key as `tunesmith init`, the table in docs/configuration.md and the web page's form show it: read from the config
classes, so the documentation cannot drift from the code."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .run import SECTIONS, RunConfig


def _field_default(field) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def _yaml_value(value: Any) -> str:
    """The value as YAML on one line: a string with line breaks in double quotes, so that a table row holds it."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, str) and "\n" in value:
        return json.dumps(value)  # a JSON string is a YAML double-quoted scalar
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


@dataclass(frozen=True)
class ConfigKey:
    """One config key as `init`, the table in docs/configuration.md and the web page's form show it."""

    section: str  # "" for the top-level `task`
    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()  # the allowed values of a Literal key

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def default_text(self) -> str:
        return _yaml_value(self.default)


def _choices(field) -> tuple[str, ...]:
    annotation = field.annotation
    if get_origin(annotation) is Union:  # Optional[Literal[...]]
        annotation = next((a for a in get_args(annotation) if a is not type(None)), annotation)
    return tuple(str(v) for v in get_args(annotation)) if get_origin(annotation) is Literal else ()


def config_keys(tasks: dict[str, str]) -> list[ConfigKey]:
    """Every config key with its default and meaning, from the config classes: the one source of all three. `tasks`:
    each task's name and what it learns (`tunesmith.tasks.task_summaries`), which the config itself does not list."""
    task = RunConfig.model_fields["task"]
    meaning = f"{task.description}: " + "; ".join(f"{name}: {summary}" for name, summary in tasks.items())
    keys = [ConfigKey("", "task", task.default, meaning, tuple(tasks))]
    for section, cls in SECTIONS.items():
        keys += [ConfigKey(section, name, _field_default(field), field.description, _choices(field))
                 for name, field in cls.model_fields.items()]
    return keys


def starter_yaml(tasks: dict[str, str]) -> str:
    """The commented config that `tunesmith init` writes: every key, its default and its meaning."""
    lines = ["# tunesmith run config. Every key is optional; flags and --set section.key=value override it.", ""]
    for section, keys in itertools.groupby(config_keys(tasks), key=lambda key: key.section):
        indent = "  " if section else ""
        lines += [f"{section}:"] if section else []
        for key in keys:
            lines += [f"{indent}# {key.description}", f"{indent}{key.name}: {key.default_text}"]
        lines.append("")
    return "\n".join(lines)


def reference_markdown(tasks: dict[str, str]) -> str:
    """The table of config keys in docs/configuration.md."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{key.key}` | `{key.default_text}` | {key.description} |" for key in config_keys(tasks)]
    return "\n".join(rows)
