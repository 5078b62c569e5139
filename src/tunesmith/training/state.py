"""The loop's own state: everything besides tensors that a resumed run needs (saved as state.json in each checkpoint)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field, fields


_KINDS = {"int": (int,), "float": (int, float), "dict": (dict,), "list": (list,), "str": (str,)}
CHECKED_APART = ("settings", "decided", "probe_texts")  # records whose damage their own checks name, with the fix (resume, Checkpointer)


@dataclass
class LoopState:
    step: int = 0
    base_val_loss: float = math.nan
    best_val_loss: float = math.inf
    best_step: int = 0
    evals_since_best: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    skipped_steps: int = 0
    bad_in_a_row: int = 0
    rollbacks: int = 0
    first_loss: float | None = None
    high_loss_steps: int = 0
    micro_batch_size: int = 0
    val_loss_std: float = math.nan
    best_score: float = math.inf  # the task's selection score, lower is better (val_loss, or minus accuracy / macro-F1)
    base_metrics: dict = field(default_factory=dict)  # the task's metrics of the base model
    best_metrics: dict = field(default_factory=dict)  # ... and at the best step
    probe_base: dict = field(default_factory=dict)  # the base model's mean NLL on the forgetting probe's parts
    probe_best: dict = field(default_factory=dict)  # the probe's metrics at the best step
    probe_texts: dict = field(default_factory=dict)  # the texts probe_base was measured on (Probe.texts_record), which a resume scores
    over_drift_steps: list[int] = field(default_factory=list)  # evaluations whose drift was over monitor.max_drift
    probe_seconds: float = 0.0
    validation_seconds: float = 0.0  # the validation passes alone, which the probe's cost is measured against
    bench_base: dict = field(default_factory=dict)  # monitor.benchmarks: the base model's scores, as metrics-row keys
    bench_best: dict = field(default_factory=dict)  # ... and the final model's (the best step's)
    bench_seconds: float = 0.0
    rollout: dict = field(default_factory=dict)  # GRPO: the completions of the round in progress (see tasks.grpo.rollout)
    # what a resume may not change, as the run started (resume.recorded_settings): the monitor's settings, validated as
    # such, under the name checkpoints have always kept them by; and the others, recorded since
    settings: dict = field(default_factory=dict)
    decided: dict = field(default_factory=dict)
    validation: str = ""  # the fingerprint of the text every evaluation is scored on (data.prepare.validation_fingerprint)

    @staticmethod
    def problem_in(values: dict) -> str | None:
        """What in a checkpoint's state.json is not of the type the loop keeps there (a hand-edited or foreign file), or
        None; the step must be there."""
        if "step" not in values:
            return "it holds no step"
        for known in fields(LoopState):
            value = values.get(known.name)
            if known.name not in values or known.name in CHECKED_APART or (value is None and "None" in known.type):
                continue
            kind = _KINDS.get(known.type.split("[")[0].split(" |")[0])
            if kind is not None and (not isinstance(value, kind) or (isinstance(value, bool) and bool not in kind)):
                return f"its {known.name} is {str(value)[:40]!r}"
        return None if values["step"] >= 0 else "its step is negative"

    def as_dict(self) -> dict:
        return asdict(self)

    def load(self, values: dict) -> None:
        """Take a checkpoint's values in place, so every holder of this state sees them; rollbacks are never undone, and
        the settings of a checkpoint from before they were recorded are this run's, recorded from now on."""
        rollbacks, settings, decided = self.rollbacks, self.settings, self.decided
        known = {f.name for f in fields(self)}
        fresh = LoopState(**{key: value for key, value in values.items() if key in known})
        self.__dict__.update(fresh.__dict__)
        self.rollbacks = max(self.rollbacks, rollbacks)
        self.settings, self.decided = self.settings or settings, self.decided or decided

    @contextlib.contextmanager
    def timed(self):
        """Time spent outside training steps (evaluation, samples, checkpoints), counted apart from tokens/s."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.eval_seconds += time.perf_counter() - started
