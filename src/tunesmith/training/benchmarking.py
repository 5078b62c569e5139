"""monitor.benchmarks in a run: where the scores are taken (the base model, each evaluation with benchmark_every eval, the
final model), and what summary.json keeps of them. Rank 0 measures; a sharded model is not benchmarked.
"""

from __future__ import annotations

import time

from ..config import RunConfig
from ..errors import ConfigError, UserError
from ..harness.scores import scores_from_row
from .distributed import Distributed
from .state import LoopState


class RunBenchmarks:
    def __init__(self, cfg: RunConfig, parts, context: Distributed, log):
        self.parts, self.monitor, self.note, self.log = parts, None, None, log
        self.setup_seconds = 0.0  # importing lm-eval and loading the tasks, once, before training
        self.every = cfg.monitor.benchmark_every
        if not cfg.monitor.benchmarks:
            return
        if parts.labels is not None:
            raise ConfigError(["monitor.benchmarks: a classifier with a head writes no text for a benchmark to score; "
                               "remove monitor.benchmarks, or use classify.method: generative"])
        if parts.sharded:
            self.note = "a model sharded across processes (fsdp) is not benchmarked during training"
            log(f"benchmarks: skipped: {self.note}")
            return
        if context.is_main:
            from ..harness.during import BenchmarkMonitor

            started = time.perf_counter()
            try:
                self.monitor = BenchmarkMonitor(cfg.monitor, parts.tokenizer, parts.precision)
            except UserError as exc:  # the harness names the flag; a run names its config key
                raise ConfigError([str(exc).replace("--benchmarks", "monitor.benchmarks")]) from None
            self.setup_seconds = time.perf_counter() - started
            log(self.monitor.describe())

    def _timed(self, state: LoopState, measure):
        started = time.perf_counter()
        with state.timed():
            result = measure()
        state.bench_seconds += time.perf_counter() - started
        return result

    def _measure(self, state: LoopState) -> dict:
        return self._timed(state, lambda: self.monitor.measure(self.parts.model))

    def at_start(self, state: LoopState) -> dict:
        """The base model's scores, for the step-0 row: kept from an earlier run of the same base when there is one."""
        if self.monitor is None:
            return {}
        from ..evaluation.forgetting import model_key

        identity = model_key(self.parts.resolved, self.parts.tokenizer)
        row, kept = self._timed(state, lambda: self.monitor.measure_base(self.parts.model, identity))
        if kept:
            self.log("benchmarks: the base model's scores kept from an earlier run of it on these benchmarks")
        state.bench_base = state.bench_best = row
        return row

    def at_evaluation(self, state: LoopState, improved: bool) -> dict:
        """With benchmark_every eval, this evaluation's scores; kept as the final model's when the step is the new best."""
        if self.monitor is None or self.every != "eval":
            return {}
        row = self._measure(state)
        if improved:
            state.bench_best = row
        return row

    def at_end(self, state: LoopState) -> dict:
        """The final model's scores (the best step's weights, which the export has just put into the model)."""
        if self.monitor is None:
            return {}
        if self.every != "eval":
            state.bench_best = self._measure(state)
        return state.bench_best

    def summary(self, state: LoopState, cfg: RunConfig) -> dict:
        """summary.json's `benchmarks`: the base and final scores, where the final ones come from, and what they cost."""
        if not cfg.monitor.benchmarks:
            return {}
        if self.note:
            return {"skipped": self.note}
        return {
            "benchmarks": list(cfg.monitor.benchmarks),
            "limit": cfg.monitor.benchmark_limit,
            "every": self.every,
            "base": [s.as_dict() for s in scores_from_row(state.bench_base)],
            "final": [s.as_dict() for s in scores_from_row(state.bench_best)],
            "final_step": state.best_step,
            "seconds": round(state.bench_seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
        }
