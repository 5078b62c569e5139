"""The run's evaluator: `evaluation.evaluate` on the validation set at each evaluation point, the score, and the best step."""

from __future__ import annotations

import math
import time

from ..evaluation.forgetting import probe_row, zero_point
from ..evaluation.scoring import evaluate
from ..tasks.loss import Validation
from .distributed import Distributed
from .state import LoopState


class Evaluator:
    def __init__(self, parts, batch_size: int, max_blocks: int | None, max_drift: float | None, context: Distributed, log):
        self.task, self.parts, self.context, self.log = parts.task, parts, context, log
        self.batch_size, self.max_blocks, self.max_drift = batch_size, max_blocks, max_drift

    def evaluate(self, state: LoopState) -> Validation:
        """On rank 0, the other ranks waiting for its result; a sharded model needs every rank in its forward."""
        parts, result = self.parts, None
        if self.context.is_main or parts.sharded:
            started = time.perf_counter()
            with state.timed():
                result = evaluate(self.task, parts.model, parts.val, parts.tokenizer, self._batch(),
                                  parts.device, parts.precision, self.max_blocks, self.log)
            state.validation_seconds += time.perf_counter() - started
        return result if parts.sharded else self.context.share(result)

    def probe(self, state: LoopState) -> dict:
        """The forgetting probe's metrics (drift_nats, ...), against the zero point the first call measures: the model at
        that evaluation, or monitor.drift_from's model."""
        parts = self.parts
        if parts.probe is None:
            return {}
        nll = self._measured(state, lambda: parts.probe.measure(self.task.probe_logits(parts.model), self._batch(), parts.device,
                                                                 parts.precision))
        if not state.probe_base:
            state.probe_base = nll if parts.probe.zero_from is None else self._zero(state)
            state.probe_texts = parts.probe.texts_record()
        return probe_row(nll, state.probe_base)

    def _zero(self, state: LoopState) -> dict:
        """monitor.drift_from's NLL on the probe, measured on rank 0 alone (a whole second model on every rank of a
        sharded run would not fit where the run had to shard) and shared."""
        started, nll = time.perf_counter(), None
        if self.context.is_main:
            with state.timed():
                nll = zero_point(self.parts.probe, self._batch(), self.parts.device, self.parts.precision)
        state.probe_seconds += time.perf_counter() - started
        return self.context.share(nll)

    def _batch(self) -> int:
        return self.batch_size or self.parts.runner.micro_batch_size

    def _measured(self, state: LoopState, measure) -> dict:
        """`measure()` run in evaluation mode on rank 0 (on every rank of a sharded model) and shared, its time counted."""
        parts, nll = self.parts, None
        if self.context.is_main or parts.sharded:
            model, started = parts.model, time.perf_counter()
            was_training = model.training
            model.eval()
            with state.timed():
                nll = measure()
            model.train(was_training)
            state.probe_seconds += time.perf_counter() - started
        return nll if parts.sharded else self.context.share(nll)

    def over_budget(self, probed: dict) -> bool:
        """Whether an evaluation drifted past monitor.max_drift, so that it may not be the best step (a NaN drift too)."""
        return self.max_drift is not None and bool(probed) and not probed["drift_nats"] <= self.max_drift

    def start(self, result: Validation, state: LoopState, over_budget: bool = False) -> None:
        """The base model's evaluation: the starting point every later one is compared with; a start already over
        monitor.max_drift (counted from another model) is beaten by any evaluation within it."""
        state.base_val_loss = state.best_val_loss = result.loss
        state.best_score = math.inf if over_budget else self.task.score(result)
        state.base_metrics = state.best_metrics = result.metrics
        state.val_loss_std = result.loss_std

    def update_best(self, result: Validation, state: LoopState, over_budget: bool = False) -> bool:
        """Record a new best evaluation; False when this one is not better, or drifted past monitor.max_drift."""
        score = self.task.score(result)
        if score >= state.best_score or over_budget:
            if not (state.best_step == 0 and 0 in state.over_drift_steps):  # no evaluation within monitor.max_drift yet
                state.evals_since_best += 1
            return False
        state.best_score, state.best_val_loss, state.best_step, state.evals_since_best = score, result.loss, state.step, 0
        state.best_metrics = result.metrics
        return True
