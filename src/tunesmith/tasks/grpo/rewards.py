"""GRPO's rewards: each a function of (prompts, completions) -> one number per completion, weighted and summed.

- a tunesmith classifier run: the probability it gives a label, or that probability's log-odds;
- a tunesmith reward-model run (task reward): its score;
- built-ins: a length target, a regular expression that must (or must not) match, words to avoid;
- the user's own Python function, named in the config as file.py:function. It is the user's code, imported from
  the file the config names and nowhere else (never from a run folder or a checkpoint), like TRL's dotted paths.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ...config import GrpoConfig, RewardSpec
from ...errors import ConfigError, UserError
from .prompts import Prompt

SHOWN_CHARS = 60
AFTER_A_FIX = "fix the function, then train again (with --resume once the run has saved a checkpoint)"
LOG_ODDS_FLOOR = 1e-6  # probabilities are held this far from 0 and 1, so log-odds stay within +-13.8


LARGEST_TOTAL = 1e12  # a completion's weighted sum of rewards: far past any reward in use, far below where a group's spread overflows


def prompt_text(prompt: Prompt) -> str:
    """A prompt as text: a string as it is; messages as their last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def model_folder(run: str) -> Path:
    """A run folder's final model, or a model folder itself; one line when it is neither."""
    path = Path(os.path.expanduser(run))
    for candidate in (path / "final", path):
        if (candidate / "tunesmith_task.json").is_file():
            return candidate
    raise ConfigError([f"grpo.rewards: {run} is not a finished tunesmith run (no final/tunesmith_task.json in it); "
                       "train a classifier (--task classify) or a reward model (--task reward) there first"])


def check_run_reward(spec: RewardSpec) -> str:
    """The trained task of a run reward, after checking it can give this reward; the config's own check, before training."""
    from .. import read_task

    folder = model_folder(spec.run)
    saved = read_task(folder)
    task = saved.get("task", "lm")
    if task == "classify":
        if not isinstance(saved.get("labels"), list) or not saved["labels"]:
            raise ConfigError([f"grpo.rewards: {folder / 'tunesmith_task.json'} lists no labels, so the classifier cannot be "
                               "read; restore the file from the run, or train the classifier again"])
        labels = [str(label) for label in saved["labels"]]
        if spec.label is None:
            raise ConfigError([f"grpo.rewards: {spec.run} is a classifier; name the label whose probability is the reward "
                               f"(label: one of {', '.join(labels)})"])
        if spec.label not in labels:
            raise ConfigError([f"grpo.rewards: {spec.run} has no label {spec.label!r}; its labels are {', '.join(labels)}"])
    elif task == "reward":
        extra = [key for key, given in (("label", spec.label is not None), ("scale", spec.scale != "probability")) if given]
        if extra:
            raise ConfigError([f"grpo.rewards: {spec.run} is a reward model, which gives one score and no probability; "
                               f"remove {' and '.join(extra)}"])
    else:
        raise ConfigError([f"grpo.rewards: {spec.run} was trained for task {task}, which gives no reward; use a classifier "
                           "run (--task classify) or a reward-model run (--task reward)"])
    return task


def check_python_reward(spec: RewardSpec) -> Path:
    file = Path(os.path.expanduser(spec.python.rpartition(":")[0]))
    if not file.is_file():
        raise ConfigError([f"grpo.rewards: {file} does not exist (python: {spec.python}); name your file as file.py:function"])
    return file


def check_rewards(cfg: GrpoConfig) -> None:
    """What can be checked before anything is loaded: there are rewards, their runs are runs and their files exist."""
    if not cfg.rewards:
        raise ConfigError(["grpo.rewards: a GRPO run needs at least one reward, e.g. [{run: runs/sentiment, label: positive}] "
                           "or [{regex: '\\\\d+'}]"])
    for spec in cfg.rewards:
        if spec.scale != "probability" and spec.kind != "run":
            raise ConfigError([f"grpo.rewards: scale: {spec.scale} applies to a classifier run's probability; remove it from "
                               f"the {spec.kind} reward"])
        if spec.kind == "run":
            check_run_reward(spec)
        elif spec.kind == "python":
            check_python_reward(spec)


class RewardFunction:
    """One reward: its name, its weight, and its scores of a batch of completions."""

    def __init__(self, spec: RewardSpec, score: Callable[[list[Prompt], list[str], list[int]], np.ndarray]):
        self.name, self.weight, self.score = spec.label_name, spec.weight, score


def length_reward(target: int):
    def score(prompts, completions, lengths) -> np.ndarray:
        return np.clip(1 - np.abs(np.asarray(lengths, dtype=np.float64) - target) / target, 0, 1)
    return score


def regex_reward(pattern: str, must_match: bool):
    compiled = re.compile(pattern)

    def score(prompts, completions, lengths) -> np.ndarray:
        return np.array([float(bool(compiled.search(text)) == must_match) for text in completions])
    return score


def avoid_reward(words: list[str]):
    patterns = [re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE) for word in words]

    def score(prompts, completions, lengths) -> np.ndarray:
        return np.array([1 - sum(bool(p.search(text)) for p in patterns) / max(1, len(patterns)) for text in completions])
    return score


def python_reward(spec: RewardSpec):
    """The user's function, imported from the file the config names; what it raises or returns wrongly ends the run in
    one line naming the function and the first row it failed on."""
    file, name = check_python_reward(spec), spec.python.rpartition(":")[2]
    module_name = f"tunesmith_user_rewards_{abs(hash(str(file.resolve())))}"
    try:
        loader = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        loader.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        raise UserError(f"grpo.rewards: importing {file} failed: {type(exc).__name__}: {_first_line(exc)}; fix the file") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError([f"grpo.rewards: {file} has no function {name} (python: {spec.python})"])

    def score(prompts, completions, lengths) -> np.ndarray:
        try:
            values = _numbers(function(list(prompts), list(completions)), len(completions), spec.python)
        except (Exception, SystemExit) as exc:  # a sys.exit() in the function ends the run as any failure does
            raise _row_failure(function, spec.python, prompts, completions, exc) from None
        return values
    return score


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def _numbers(values, count: int, where: str) -> np.ndarray:
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__") or len(values) != count:
        got = f"{len(values)} value{'s' * (len(values) != 1)}" if isinstance(values, (list, tuple)) else f"a {type(values).__name__}"
        raise ValueError(f"returned {got} for {count} completions; return a list of one number per completion")
    out = np.empty(count)
    for row, value in enumerate(values):
        number = _number(value)
        if number is None or not math.isfinite(number):
            raise ValueError(f"returned {value!r} for row {row}, not a finite number")
        out[row] = number
    return out


def _number(value) -> float | None:
    """A value as a float: a Python or numpy number, or a one-element array or tensor; None for anything else (text,
    booleans, complex numbers, an int past float's range)."""
    if hasattr(value, "item") and not isinstance(value, (np.integer, np.floating)):
        try:
            value = value.item()
        except (ValueError, RuntimeError, TypeError):
            return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _row_failure(function, where: str, prompts, completions, exc: Exception) -> UserError:
    """The first row the function fails on alone (or the batch's failure when no row fails alone, or when it answered the
    batch with the wrong number of values), as one line."""
    for row, (prompt, completion) in enumerate(zip(prompts, completions) if "completions; return" not in str(exc) else []):
        try:
            _numbers(function([prompt], [completion]), 1, where)
        except (Exception, SystemExit) as alone:
            shown = prompt_text(prompt)[:SHOWN_CHARS]
            return UserError(f"grpo.rewards: {where} failed on row {row} (prompt {shown!r}, completion {completion[:SHOWN_CHARS]!r}): "
                             f"{type(alone).__name__}: {_first_line(alone)}; {AFTER_A_FIX}")
    return UserError(f"grpo.rewards: {where} failed on a batch of {len(completions)}: {type(exc).__name__}: {_first_line(exc)}; "
                     f"{AFTER_A_FIX}")


def classifier_reward(spec: RewardSpec, device: str):
    from ..trained import Classifier

    classifier = Classifier(str(model_folder(spec.run)), device, log=lambda _m: None)
    column = classifier.labels.index(spec.label)

    def score(prompts, completions, lengths) -> np.ndarray:
        texts = [completion if spec.text == "completion" or not isinstance(prompt, str) else prompt + completion
                 for prompt, completion in zip(prompts, completions)]
        neutral = 1 / len(classifier.labels)  # an empty text: no verdict either way, so no reward for saying nothing
        probabilities = np.array([p[column] if p is not None else neutral for p in classifier.probabilities(texts, batch_size=32)])
        return log_odds(probabilities) if spec.scale == "log_odds" else probabilities
    return score


def log_odds(probabilities: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)): a saturated classifier's 0.99 and 0.9999 are 4.6 and 9.2, so a group of completions it all
    but agrees on still ranks by how sure it is (TRL's sentiment example rewards the classifier's logit likewise)."""
    p = np.clip(probabilities.astype(np.float64), LOG_ODDS_FLOOR, 1 - LOG_ODDS_FLOOR)
    return np.log(p) - np.log1p(-p)


def reward_model_reward(spec: RewardSpec, device: str):
    from ..reward import RewardModel

    model = RewardModel(str(model_folder(spec.run)), device, log=lambda _m: None)

    def score(prompts, completions, lengths) -> np.ndarray:
        shown = list(prompts) if spec.text == "full" else [""] * len(prompts)
        return np.asarray(model.rewards(shown, list(completions)), dtype=np.float64)
    return score


def build_reward(spec: RewardSpec, device: str) -> RewardFunction:
    kind = spec.kind
    if kind == "run":
        task = check_run_reward(spec)
        score = classifier_reward(spec, device) if task == "classify" else reward_model_reward(spec, device)
    elif kind == "length":
        score = length_reward(spec.length)
    elif kind == "regex":
        score = regex_reward(spec.regex, spec.must_match)
    elif kind == "avoid":
        score = avoid_reward(spec.avoid)
    else:
        score = python_reward(spec)
    return RewardFunction(spec, score)


class Rewards:
    """The run's rewards: each function's scores, and their weighted sum."""

    def __init__(self, cfg: GrpoConfig, device: str = "auto"):
        check_rewards(cfg)
        self.functions = [build_reward(spec, device) for spec in cfg.rewards]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.functions]

    def score(self, prompts: list[Prompt], completions: list[str], lengths: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(N,) total rewards and each function's (N,) scores, by name."""
        each = {f.name: np.asarray(f.score(prompts, completions, lengths), dtype=np.float64) for f in self.functions}
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is refused just below
            total = np.asarray(sum(f.weight * each[f.name] for f in self.functions), dtype=np.float64)
        past = np.flatnonzero(~(np.abs(total) <= LARGEST_TOTAL))
        if len(past):
            row = int(past[0])
            parts = ", ".join(f"{f.name} {each[f.name][row]:.3g} x {f.weight:g}" for f in self.functions)
            raise UserError(f"grpo.rewards: the weighted sum of the rewards is {total[row]:.3g} for the completion of "
                            f"{prompt_text(prompts[row])[:SHOWN_CHARS]!r} ({parts}), past {LARGEST_TOTAL:.0e}, where the "
                            "groups' means and spreads lose their precision; scale the rewards or their weights down")
        return total, each
