"""The search space of a sweep, read from YAML: which config keys vary, over what, and the config each point makes.

    train.lr: {log: [1e-5, 3e-3]}        # a float drawn on a log scale
    train.warmup_steps: {int: [0, 200]}  # an integer (optionally `step: 10`, or `log: true`)
    model.lora_dropout: {float: [0, 0.2]}
    model.lora_rank: [8, 16, 32]         # one of these
    model.method: [lora, full]

A key only one training method reads (LoRA's rank) is drawn only for trials that train with that method.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import SECTIONS, UNBUILDABLE, RepeatedKey, RunConfig, TooLarge, build_config, load_yaml, raw_config
from ..errors import UserError
from ..methods import read_by_another
from ..tasks import why_unread

METHOD_KEY = "model.method"
MAX_CHECKED_POINTS = 4096  # a finite space up to this size has every point checked before the first trial
MAX_STEPS_IN_RANGE = 1_000_000  # a step that cuts a range finer than this is a typo (and past Optuna's decimal arithmetic)
SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Dimension:
    """One key of the space: choices, or a numeric range (`kind` float or int, `log` scale, optional `step`)."""

    key: str
    choices: tuple | None = None
    kind: str = "float"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def points(self) -> list | None:
        """Every value, where there are few enough to list; None for a continuous range."""
        if self.choices is not None:
            return list(self.choices)
        if self.kind == "int" and not self.log:
            step = int(self.step or 1)
            if (self.high - self.low) // step + 1 > MAX_CHECKED_POINTS:
                return None
            return list(range(int(self.low), int(self.high) + 1, step))
        return None

    def ends(self) -> list:
        return list(self.choices) if self.choices is not None else [self.low, self.high] if self.kind == "float" \
            else [int(self.low), int(self.high)]

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key}: one of {list(self.choices)}"
        scale = "log " if self.log else ""
        return f"{self.key}: {scale}{self.kind} in [{self.low:g}, {self.high:g}]" + (f" step {self.step:g}" if self.step else "")


def _for_method(point: dict[str, Any], base_method: str) -> dict[str, Any]:
    """The point without the keys its method does not read (LoRA's rank when the point trains in full)."""
    method = point.get(METHOD_KEY, base_method)
    return {k: v for k, v in point.items() if k == METHOD_KEY or not read_by_another(k, method)}


@dataclass
class Space:
    dimensions: list[Dimension]
    base_method: str = "full"

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def sample(self, trial) -> dict[str, Any]:
        """The trial's settings, the method first so that the keys another method reads are left out."""
        values: dict[str, Any] = {}
        for dimension in self.dimensions:
            method = values.get(METHOD_KEY, self.base_method)
            if dimension.key != METHOD_KEY and read_by_another(dimension.key, method):
                continue
            values[dimension.key] = dimension.suggest(trial)
        return values

    def finite_points(self) -> list[dict[str, Any]] | None:
        """Every point of a space of choices and small integer ranges; None when a range is continuous or it is large."""
        lists = [d.points() for d in self.dimensions]
        if any(values is None for values in lists) or math.prod(len(v) for v in lists) > MAX_CHECKED_POINTS:
            return None
        points = []
        for combination in itertools.product(*lists):
            point = _for_method(dict(zip(self.keys, combination)), self.base_method)
            if point not in points:
                points.append(point)
        return points

    def corner_points(self) -> list[dict[str, Any]]:
        """Each range's ends and each choice, one key at a time (the others at their first value): checked when the
        whole space is too large to list."""
        first = {d.key: d.ends()[0] for d in self.dimensions}
        points = []
        for dimension in self.dimensions:
            for value in dimension.ends():
                points.append(_for_method({**first, dimension.key: value}, self.base_method))
        return points


def read_space(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--space {path}: not found; write a YAML mapping of config keys to ranges, e.g. "
                        "'train.lr: {log: [1e-5, 3e-3]}'")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except RepeatedKey as exc:
        raise UserError(f"--space {path}: {exc}; keep the one you mean") from None
    except TooLarge as exc:
        raise UserError(f"--space {path}: {exc}") from None
    except (yaml.YAMLError, *UNBUILDABLE):  # not YAML, not UTF-8, a tag it cannot build
        raise UserError(f"--space {path}: not valid YAML text; write one 'section.key: range' per line") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"--space {path}: must be a mapping of config keys to ranges, e.g. 'train.lr: {{log: [1e-5, 3e-3]}}'")
    return raw


def _known_keys() -> list[str]:
    return [f"{name}.{key}" for name, section in SECTIONS.items() for key in section.model_fields]


# what decides the validation text or how it is cut and scored (as a resume's check, data.prepare.validation_fingerprint):
# trials that differ in them are scored on different text, and their scores do not rank
VALIDATION_TEXT_KEYS = ("data.train", "data.val", "data.val_fraction", "data.text_field", "data.template", "data.txt_documents",
                        "data.label_field", "data.block_size", "data.packing", "train.eval_max_blocks", "classify.prompt",
                        "classify.verbalizers")
VALIDATION_TEXT_SECTIONS = ("clean.",)


def _check_key(key: Any) -> str:
    known = _known_keys()
    if isinstance(key, str) and key in known:
        if key.startswith("output."):
            raise UserError(f"space: {key} names where a run is written; a sweep writes each trial to its own folder")
        if key in VALIDATION_TEXT_KEYS or key.startswith(VALIDATION_TEXT_SECTIONS):
            raise UserError(f"space: {key} decides the validation text or how it is scored, so trials would be scored apart and could "
                            "not be ranked; set it in the config, and sweep each value as its own study")
        return key
    close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; keys are section.key, e.g. train.lr (see docs/configuration.md)"
    raise UserError(f"space: {key!r} is not a config key{hint}")


def _number(key: str, value: Any, what: str) -> float:
    value = _as_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"space: {key}: {what} must be a finite number (got {value!r})")
    return float(value)


def _range(key: str, spec: dict) -> Dimension:
    kinds = [k for k in ("log", "float", "int") if k in spec and isinstance(spec[k], list)]
    extra = set(spec) - {"log", "float", "int", "step"}
    if len(kinds) != 1 or extra:
        raise UserError(f"space: {key}: write a range as {{log: [low, high]}}, {{float: [low, high]}} or {{int: [low, high]}} "
                        f"(optionally with step: N; for ints, log: true); got {spec!r}")
    kind = kinds[0]
    bounds = spec[kind]
    if len(bounds) != 2:
        raise UserError(f"space: {key}: a range has two bounds, [low, high] (got {bounds!r})")
    low, high = (_number(key, b, "a bound") for b in bounds)
    if "log" in spec and kind != "log" and not isinstance(spec["log"], bool):
        raise UserError(f"space: {key}: log is true or false (got {spec['log']!r})")
    log = kind == "log" or spec.get("log") is True
    if low >= high:
        raise UserError(f"space: {key}: the bounds [{low:g}, {high:g}] are reversed or equal; write [low, high] with low < high "
                        "(a single value belongs in the config, not the space)")
    if log and low <= 0:
        fix = "drop log: true" if kind != "log" else "use {float: [low, high]}"
        raise UserError(f"space: {key}: a log range needs positive bounds (got [{low:g}, {high:g}]); to include 0, {fix}")
    if kind == "int" and (low != int(low) or high != int(high) or max(abs(low), abs(high)) > 2**53):
        raise UserError(f"space: {key}: an int range needs whole bounds (got [{low:g}, {high:g}])")
    step = spec.get("step")
    if step is not None:
        step = _number(key, step, "step")
        if step <= 0 or log or (kind == "int" and step != int(step)):
            raise UserError(f"space: {key}: step must be positive (whole for an int range), and a log range takes none "
                            f"(got {spec['step']!r})")
        steps = (high - low) / step
        if not math.isfinite(steps) or steps > MAX_STEPS_IN_RANGE or steps < 1:
            raise UserError(f"space: {key}: step {step:g} is too {'large' if steps < 1 else 'small'} for the range "
                            f"[{low:g}, {high:g}]; use between 1 and {MAX_STEPS_IN_RANGE:,} steps, or leave step out")
        if not math.isclose(steps, round(steps), abs_tol=1e-9):
            raise UserError(f"space: {key}: step {step:g} does not divide the range [{low:g}, {high:g}]; pick bounds a whole "
                            "number of steps apart")
    return Dimension(key, kind="int" if kind == "int" else "float", low=low, high=high, log=log, step=step)


EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e-4: a number, though YAML 1.1 reads it as text


def _as_number(value: Any) -> Any:
    return float(value) if isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value.strip()) else value


def _choices(key: str, values: list) -> Dimension:
    values = [_as_number(v) for v in values]
    if not values:
        raise UserError(f"space: {key}: the choice list is empty; give at least one value, e.g. {key}: [a, b]")
    for value in values:
        if not isinstance(value, SCALARS):
            raise UserError(f"space: {key}: choices must be single values (text, numbers, true/false, null); got {value!r}")
    if len(set(map(repr, values))) != len(values):
        raise UserError(f"space: {key}: a choice is listed twice ({values!r})")
    return Dimension(key, choices=tuple(values))


def parse_space(raw: dict) -> list[Dimension]:
    dimensions = []
    for key, spec in raw.items():
        key = _check_key(key)
        if isinstance(spec, list):
            dimensions.append(_choices(key, spec))
        elif isinstance(spec, dict):
            dimensions.append(_range(key, spec))
        else:
            raise UserError(f"space: {key}: expected a list of choices or a range such as {{log: [1e-5, 3e-3]}} (got {spec!r})")
    dimensions.sort(key=lambda d: d.key != METHOD_KEY)  # the method first: it decides which other keys apply
    return dimensions


def trial_raw(base: Path | None, overrides: list[tuple[str, Any]], point: dict[str, Any]) -> dict:
    """The config of one point as the user would write it: the sweep's config file, its flags, then the point's values."""
    return raw_config(base, [*overrides, *point.items()])


def trial_config(base: Path | None, overrides: list[tuple[str, Any]], point: dict[str, Any]) -> RunConfig:
    return build_config(trial_raw(base, overrides, point))


def check_points(space: Space, base: Path | None, overrides: list[tuple[str, Any]], check) -> int:
    """Build the config of every point of a finite space (else each range's ends) and run `check` on it (the task's
    own checks): a value the config refuses ends the sweep here, before any trial trains. Returns the points checked."""
    points = space.finite_points() or space.corner_points()
    for point in points:
        try:
            check(trial_config(base, overrides, point))
        except UserError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
            raise UserError(f"space: the point {shown} is refused by the config: {exc.lines()[0]}") from None
    return len(points)


def build_space(raw: dict, base_cfg: RunConfig) -> Space:
    """The space over `base_cfg`; a key that only another method reads is refused unless the space varies the method,
    and so is a key the config's task never reads (another task's section, distillation without a teacher): its
    trials would all train alike."""
    dimensions = parse_space(raw)
    keys = [d.key for d in dimensions]
    for key in keys:
        reason = why_unread(key, base_cfg, teacher_varies="distill.teacher" in keys)
        if reason:
            raise UserError(f"space: {key} is {reason}; drop it from the space, or change the config")
    method = base_cfg.model.method
    if METHOD_KEY not in [d.key for d in dimensions]:
        for dimension in dimensions:
            if read_by_another(dimension.key, method):
                raise UserError(f"space: {dimension.key} is read only by another training method, and the config trains "
                                f"with {method}; set model.method in the config, or add it to the space")
    return Space(dimensions, method)
