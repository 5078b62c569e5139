"""Running benchmarks with lm-eval: load the selected tasks (each failure named by its benchmark), evaluate, keep the output."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .scores import Score, scores_of
from .selection import Selection, check_names

OFFLINE_FIX = ("write a task file with `dataset_path: json` and `dataset_kwargs: {data_files: {test: FILE}}` pointing at a local copy, "
               "and pass its path to --benchmarks")
KEPT_KEYS = ("results", "groups", "group_subtasks", "versions", "n-shot", "higher_is_better", "n-samples", "configs", "config",
             "lm_eval_version", "date")


@dataclass
class BenchmarkRun:
    """What one model scored: lm-eval's output (the keys worth keeping) and the scores read from it."""

    output: dict
    scores: list[Score] = field(default_factory=list)

    def payload(self, description: dict) -> dict:
        """lm-eval's results, versions, n-shot and config, plus which model this was (tunesmith's description)."""
        return {**{key: self.output[key] for key in KEPT_KEYS if key in self.output}, "tunesmith_model": description}


def write_output(path: Path, done: list[tuple[dict, BenchmarkRun]]) -> None:
    """The first model's output; with --compare, the second's under `compared_with`."""
    from ..rundir.durable import write_atomically

    payload = done[0][1].payload(done[0][0])
    if len(done) > 1:
        payload["compared_with"] = done[1][1].payload(done[1][0])
    write_atomically(path, json.dumps(payload, indent=2, default=str) + "\n")


def quiet_harness() -> None:
    """lm-eval logs every step at INFO, and warns that an object was passed instead of a name, which is the point here."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass


def _load_error(spec: str, exc: Exception) -> UserError:
    text = " ".join(str(exc).split())
    if type(exc).__name__ in ("ConnectionError", "OfflineModeIsEnabled", "DatasetNotFoundError") or "Couldn't reach" in text:
        return UserError(f"--benchmarks {spec}: its data set cannot be reached offline ({text[:160]}); {OFFLINE_FIX}")
    if isinstance(exc, FileNotFoundError):
        return UserError(f"--benchmarks {spec}: a file it reads is missing ({text[:200]}); check the task file's data_files")
    if type(exc).__module__.startswith("yaml"):
        return UserError(f"--benchmarks {spec}: the task file does not parse ({text[:200]})")
    return UserError(f"--benchmarks {spec}: lm-eval could not load it ({type(exc).__name__}: {text[:200]})")


def load_tasks(selection: Selection, manager) -> list:
    """Each benchmark's lm-eval Task or Group, its data read now, so a failure names the benchmark that caused it."""
    check_names(selection, manager)
    loaded = []
    for spec in selection.specs:
        try:
            loaded.append(manager._load_spec(spec))  # the public load() flattens groups, losing their aggregate scores
        except Exception as exc:  # lm-eval and datasets raise many kinds; each becomes one line naming the benchmark
            raise _load_error(spec, exc) from None
    return [item for entry in loaded for item in (entry if isinstance(entry, list) else [entry])]


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: the number of items per benchmark must be at least 1 (leave it out for all)")


def run_benchmarks(lm, tasks: list, manager, limit: int | None = None, num_fewshot: int | None = None, chat_template: bool = False,
                   keep_rng: bool = False, bootstrap_iters: int = 100000) -> BenchmarkRun:
    """lm-eval's evaluation of `lm` on the loaded tasks; `keep_rng` leaves the global random states alone (a run in training)."""
    import lm_eval

    seeds = {"random_seed": None, "numpy_random_seed": None, "torch_random_seed": None} if keep_rng else {}
    try:
        output = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                                         apply_chat_template=chat_template, log_samples=False, bootstrap_iters=bootstrap_iters, **seeds)
    except ValueError as exc:
        if num_fewshot and "Sample larger than population" in str(exc):  # lm-eval draws the examples with random.sample
            raise UserError(f"--num-fewshot {num_fewshot}: a benchmark has fewer items than that to show before each one; "
                            "use fewer") from None
        raise
    return BenchmarkRun(output, scores_of(output.get("results", {})))
