"""The whole run config, and how it is built: validated from a YAML file, flags and `--set key=value` overrides,
every problem reported at once."""

from __future__ import annotations

import contextlib
import datetime as _dt
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from ..errors import ConfigError
from .sections import CleanConfig, DataConfig, DataSource, ModelConfig, MonitorConfig, OutputConfig, Section, TrainConfig
from .use_cases import ChatConfig, ClassifyConfig, DistillConfig, FromTeacher, GrpoConfig, PreferenceConfig, RewardSpec, StudentConfig


class RunConfig(Section):
    task: str = Field("lm", description="what the run learns from")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def with_run_dir(self, run_dir: Path | None = None) -> RunConfig:
        """This config with `output.dir` fixed: `run_dir`, the configured one, or a new default name.

        The default name holds the start time, so it is picked once, when a run starts, and passed down.
        """
        if run_dir is None and self.output.dir:
            return self
        chosen = run_dir or Path("runs") / (self.output.name or _dt.datetime.now().strftime("run-%Y%m%d-%H%M%S"))
        return self.model_copy(update={"output": self.output.model_copy(update={"dir": str(chosen)})})

    @property
    def run_dir(self) -> Path:
        """The run directory; only a config that went through `with_run_dir` has one."""
        if not self.output.dir:
            raise ValueError("output.dir is not set: call with_run_dir() once, when the run starts")
        return Path(self.output.dir)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


SECTIONS: dict[str, type[Section]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "clean": CleanConfig,
    "train": TrainConfig,
    "monitor": MonitorConfig,
    "chat": ChatConfig,
    "classify": ClassifyConfig,
    "preference": PreferenceConfig,
    "grpo": GrpoConfig,
    "distill": DistillConfig,
    "output": OutputConfig,
}


UNION_BRANCHES = ("str", "DataSource")  # what pydantic names the branches of `data.train`'s items in an error's location


def _describe_error(err: dict) -> str:
    key = ".".join(str(part) for part in err["loc"] if part not in UNION_BRANCHES)
    kind = err["type"]
    if kind == "extra_forbidden":
        section = str(err["loc"][0])
        allowed = SECTIONS[section].model_fields if section in SECTIONS and len(err["loc"]) > 1 else ["task", *SECTIONS]
        if "DataSource" in err["loc"]:
            allowed = DataSource.model_fields
        if section == "grpo" and "rewards" in err["loc"]:
            allowed = RewardSpec.model_fields
        if section == "distill" and "student" in err["loc"]:
            allowed = FromTeacher.model_fields if "from_teacher" in err["loc"] else StudentConfig.model_fields
        return f"{key}: unknown key; allowed: {', '.join(allowed)}"
    message = err["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        message = message.replace("Input should be", "must be")
    else:
        message = message.replace("Input should be", "must be").replace("Input ", "")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"{key}: {message}{shown}"


def build_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a RunConfig, reporting every problem at once."""
    not_utf8 = list(_not_utf8(raw))
    if not_utf8:
        raise ConfigError([f"{key}: {shown!r} holds bytes that are not UTF-8 (as typed, or in a file's name); write it in "
                           "UTF-8, or rename the file" for key, shown in not_utf8])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        errors = [e for e in exc.errors() if not (e["type"] == "string_type" and isinstance(e.get("input"), dict))]  # a source's own error says more
        raise ConfigError([_describe_error(e) for e in errors or exc.errors()]) from None


def _not_utf8(value: Any, key: str = ""):
    """(key, the value with its undecodable bytes shown as U+FFFD) for each string that holds bytes Python could not
    decode as UTF-8 (a command line's, kept as lone surrogates), which no file, tokenizer or log can take."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _not_utf8(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for item in value:
            yield from _not_utf8(item, key)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            yield key, typed_text(value)


def typed_text(value: str) -> str:
    """Text typed on the command line or piped in, its bytes that are not UTF-8 (which Python keeps as lone surrogates, and
    a tokenizer refuses) replaced by U+FFFD, as --input files are read."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return value.encode("utf-8", "replace").decode("utf-8")


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` (or `task=chat`) with the value read as YAML, so numbers, booleans and lists work."""
    name = text.split("=", 1)[0].strip()
    if "=" not in text or ("." not in name and name != "task"):
        raise ConfigError([f"--set {text}: expected section.key=value, e.g. train.lr=1e-4"])
    key, value = text.split("=", 1)
    if _takes_text(key.strip()):
        return key.strip(), _as_typed(value)
    try:
        parsed = load_yaml(value) if value.strip() else None
    except RepeatedKey as exc:
        raise ConfigError([f"--set {text}: the key {exc.key!r} is given twice; keep the one you mean"]) from None
    except TooLarge as exc:
        raise ConfigError([f"--set {key.strip()}: {exc}"]) from None
    except (yaml.YAMLError, *UNBUILDABLE):  # not YAML, or a tag it cannot build: the text itself
        parsed = value
    return key.strip(), parsed


def _as_typed(value: str) -> str | None:
    """A setting that is only text, as typed: `data.template={title}`, `data.text_field=2020` and `chat.system_prompt=Be
    brief # no lists` are that text, not the mapping, number and comment YAML would read; a quoted value is YAML's
    string; nothing, `null` or `~` is none."""
    stripped = value.strip()
    if stripped in ("", "null", "Null", "NULL", "~"):
        return None
    if stripped[:1] in ("'", '"'):
        with contextlib.suppress(yaml.YAMLError):
            quoted = yaml.safe_load(stripped)
            if isinstance(quoted, str):
                return quoted
    return stripped


def _takes_text(key: str) -> bool:
    """Whether the setting is a string and nothing else (data.template, model.name), walking the config's sections."""
    section: Any = RunConfig
    *path, name = key.split(".")
    for part in path:
        field = section.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, Section)):
            return False
        section = field.annotation
    field = section.model_fields.get(name)
    return field is not None and field.annotation in (str, str | None)


def apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    """`section.key=value`, or deeper (`distill.student.from_teacher.keep_layers=10`): each level a mapping, made where
    it is absent or null."""
    if key == "task":
        raw["task"] = value
        return
    section, *path, field = parts = key.split(".")
    if not all(parts):
        raise ConfigError([f"{key}: a part of the key is empty; write section.key=value, e.g. train.lr=1e-4"])
    if section not in SECTIONS:
        raise ConfigError([f"{key}: unknown section '{section}'; allowed: {', '.join(SECTIONS)}"])
    target, where = raw, []
    for part in (section, *path):
        where.append(part)
        if target.get(part) is None:
            target[part] = {}
        if not isinstance(target[part], dict):
            raise ConfigError([f"{'.'.join(where)}: must be a mapping of keys to set {key}"])
        target[part] = dict(target[part])  # a YAML alias shares one mapping between keys: set this key's own copy
        target = target[part]
    target[field] = value


# What PyYAML raises, besides YAMLError, for a tagged value it cannot build (`!!float abc`: ValueError, `!!bool x`:
# KeyError, `!!int ''`: IndexError, `!!timestamp x`: AttributeError) or for nesting past Python's recursion limit.
UNBUILDABLE = (ValueError, LookupError, TypeError, AttributeError, RecursionError)


LARGEST_CONFIG = 100_000  # values in a config, counted as its readers walk it; a real one holds a few hundred
DEEPEST_CONFIG = 100  # levels of nesting; a real config has three


def too_large(value: Any, limit: int = LARGEST_CONFIG, depth: int = DEEPEST_CONFIG) -> bool:
    """Whether walking `value` meets more than `limit` values, or nesting deeper than `depth`. YAML aliases let a file
    of a few lines name one list a billion times over ("billion laughs"): it loads at once, as shared references, and
    then every reader that walks it (validation, JSON, the page) runs for ever; and libyaml's loader reads nesting
    hundreds deep that a recursive reader cannot. The walk stops at `limit`, so the check costs at most that."""
    pending, seen = [(value, 0)], 0
    while pending:
        item, level = pending.pop()
        seen += 1
        if seen > limit or level > depth:
            return True
        if isinstance(item, dict):
            pending.extend((child, level + 1) for pair in item.items() for child in pair)
        elif isinstance(item, (list, tuple)):
            pending.extend((child, level + 1) for child in item)
    return False


class TooLarge(yaml.YAMLError):
    def __str__(self) -> str:
        return (f"its YAML aliases (*name) expand to more than {LARGEST_CONFIG:,} values, or it nests deeper than "
                f"{DEEPEST_CONFIG} levels; write the values out plainly")


class RepeatedKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f"the key {key!r} is given twice (line {line})")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice (PyYAML keeps the last one silently, so a setting
    written twice would take effect unseen)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # a list or mapping as a key: the config's checks refuse it
            if key in seen:
                raise RepeatedKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """YAML text as Python values (safe types only); a key given twice in one mapping (`RepeatedKey`) and aliases that
    expand past what a config holds (`TooLarge`) are refused."""
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)
    except RecursionError:  # nesting deeper than Python's recursion limit lets the loader build
        raise TooLarge() from None
    if too_large(value):
        raise TooLarge()
    return value


def read_yaml_leniently(text: str) -> Any:
    """A saved config's YAML as Python values (safe types only), or None where it cannot be read as a config: not YAML, a
    tag it cannot build, or `too_large`. What a run's own config.yaml is read with, where a damaged file must not stop
    the reader (diagnose, report, the page) or must be named as damaged (resume)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: a hundred configs parse in milliseconds
    try:
        value = yaml.load(text, Loader=loader)
    except (yaml.YAMLError, *UNBUILDABLE):
        return None
    return None if too_large(value) else value


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {path}: not found; create one with `tunesmith init {path}`"])
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config file {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                           "save it as UTF-8"]) from None
    except RepeatedKey as exc:
        raise ConfigError([f"config file {path}: {exc}; keep the one you mean"]) from None
    except TooLarge as exc:
        raise ConfigError([f"config file {path}: {exc}"]) from None
    except yaml.constructor.ConstructorError as exc:  # safe_load refuses tags that build Python objects (!!python/...)
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError([f"config file {path}: a YAML tag{where} that builds something other than plain values "
                           f"({str(exc.problem or '').split(' ')[-1][:60]}); a config holds text, numbers, lists and mappings only"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError([f"config file {path}: not valid YAML{where}; check indentation and colons"]) from None
    except UNBUILDABLE:
        raise ConfigError([f"config file {path}: a value is not what its YAML tag says (such as `!!float abc`); write "
                           "plain values"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"config file {path}: must be a mapping with sections {', '.join(SECTIONS)}"])
    return raw


def raw_config(path: str | Path | None = None, overrides: list[tuple[str, Any]] | None = None) -> dict[str, Any]:
    """The config as written, not yet validated: an optional YAML file, then overrides in order."""
    raw = read_config_file(path) if path else {}
    for key, value in overrides or []:
        apply_override(raw, key, value)
    return raw


def load_config(path: str | Path | None = None, overrides: list[tuple[str, Any]] | None = None) -> RunConfig:
    """The one way a RunConfig is made: an optional YAML file, then overrides in order."""
    return build_config(raw_config(path, overrides))


def check_block_size(block_size: int, context_length: int | None) -> None:
    if context_length and block_size > context_length:
        raise ConfigError(
            [f"data.block_size: {block_size} is above the model's context of {context_length} tokens; use at most {context_length}"]
        )
