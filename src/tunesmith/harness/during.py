"""Benchmarks during training (monitor.benchmarks): the base model before the first step, the final model, and with
monitor.benchmark_every eval every evaluation between; the tasks load once, before training starts.
"""

from __future__ import annotations

import contextlib
import io
import os

import torch

from ..config import MonitorConfig
from .base_scores import base_key, benchmarks_key, keep_base, read_base
from .model import DTYPES
from .run import load_tasks, quiet_harness, run_benchmarks
from .scores import row_of
from .selection import select_benchmarks

BOOTSTRAP_ITERS = 1000  # perplexity's standard error is bootstrapped: in-process, enough for two significant digits
BATCH_SIZE = 16


@contextlib.contextmanager
def _silenced():
    """lm-eval's progress bars and bootstrap lines would break the run's own progress display; one process, no pool."""
    previous = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if previous is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = previous


class BenchmarkMonitor:
    """Scores the training model on the run's benchmarks, leaving its mode and the random states as they were."""

    def __init__(self, cfg: MonitorConfig, tokenizer, precision: str):
        self.tokenizer, self.precision = tokenizer, precision
        self.limit, self.every = cfg.benchmark_limit, cfg.benchmark_every
        self.selection = select_benchmarks(cfg.benchmarks)
        quiet_harness()
        self.manager = self.selection.task_manager()
        self.tasks = load_tasks(self.selection, self.manager)
        self.benchmarks_key = benchmarks_key(self.selection)

    def describe(self) -> str:
        names = ", ".join(_shown_name(spec) for spec in self.selection.specs)
        when = "before training, at every evaluation and at the end" if self.every == "eval" else "before training and at the end"
        return f"benchmarks: {names} ({self.limit} items each, {when})"

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """One metrics row's benchmark keys: bench/<task>/<metric> and its _stderr."""
        from .lm import ContinuationLM

        was_training = model.training
        model.eval()
        try:
            with _silenced():
                lm = ContinuationLM(pretrained=model, tokenizer=self.tokenizer, batch_size=BATCH_SIZE, backend="causal",
                                    mixed_precision_dtype=DTYPES.get(self.precision))
                run = run_benchmarks(lm, self.tasks, self.manager, self.limit, keep_rng=True, bootstrap_iters=BOOTSTRAP_ITERS)
        finally:
            model.train(was_training)
        return row_of(run.scores)


    def measure_base(self, model: torch.nn.Module, model_key: str) -> tuple[dict, bool]:
        """The base model's row, and whether it was kept from an earlier run of the same base on the same benchmarks."""
        key = base_key(model_key, self.benchmarks_key, model, self.precision, self.limit)
        kept = read_base(key)
        if kept is not None:
            return kept, True
        row = self.measure(model)
        keep_base(key, row)
        return row, False


def _shown_name(spec: str) -> str:
    from pathlib import Path

    return Path(spec).stem if spec.endswith((".yaml", ".yml")) else spec
