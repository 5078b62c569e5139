"""The benchmark finding: a standard benchmark (monitor.benchmarks) fell by more than two standard errors from the base model.

A pure function from the metric history and the run's facts, as in `diagnose`, which runs it with the others. It shares
the forgetting finding's advice: both say the model is losing what it knew before fine-tuning.
"""

from __future__ import annotations

import math

from ..harness.scores import ROW_PREFIX, Score, beyond_two_stderr, scores_from_row
from .findings import FORGETTING_NATS, Advice, Finding, RunFacts, method_advice, round3

LOWER_IS_BETTER = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter", "brier_score")  # lm-eval's own


def forgetting_advice(facts: RunFacts) -> list[Advice]:
    """What moves a model less from its base: a lower learning rate, fewer trained weights, rehearsed general text."""
    advice = [Advice("train.lr", round3((facts.lr or 5e-5) / 3), "a lower learning rate moves the model less from the base")]
    advice += method_advice(facts.method, "forgetting")
    if not facts.replay:
        advice.append(Advice("data.replay", 0.1, "rehearse general text while learning the domain"))
    if facts.max_drift is None:
        advice.append(Advice("monitor.max_drift", FORGETTING_NATS, "keep as the best step only a model that drifted at most this far"))
    return advice


def _benchmark_rows(history: list[dict]) -> list[dict]:
    return [row for row in history if any(key.startswith(ROW_PREFIX) for key in row)]


def _kept(rows: list[dict]) -> dict:
    """The final model's scores when the run has ended, else those of the best evaluation so far."""
    ended = [row for row in rows if "bench_of_step" in row]
    if ended:
        return ended[-1]
    evaluated = [row for row in rows[1:] if math.isfinite(row.get("val_loss", math.nan))]
    return min(evaluated, key=lambda row: row["val_loss"]) if evaluated else rows[-1]


def _fell(base: Score, now: Score) -> bool:
    worse = now.value > base.value if base.metric in LOWER_IS_BETTER else now.value < base.value
    return worse and bool(beyond_two_stderr(base, now))


def _drift_near(history: list[dict], step: int) -> float | None:
    drifts = [row for row in history if math.isfinite(row.get("drift_nats", math.nan)) and row["step"] <= step]
    return drifts[-1]["drift_nats"] if drifts else None


def benchmark_regression(history: list[dict], facts: RunFacts) -> Finding | None:
    """A benchmark score of the kept model is worse than the base model's by more than two standard errors of the difference."""
    rows = _benchmark_rows(history)
    if len(rows) < 2 or rows[0]["step"] != 0:
        return None
    kept = _kept(rows)
    base = {(s.task, s.metric): s for s in scores_from_row(rows[0])}
    pairs = [(base[(s.task, s.metric)], s) for s in scores_from_row(kept) if (s.task, s.metric) in base]
    fallen = [(before, after) for before, after in pairs if _fell(before, after)]
    if not fallen:
        return None
    step = kept.get("bench_of_step", kept["step"])
    drift = _drift_near(history, step)
    shown = "; ".join(f"{b.task} {b.metric} {b.value:.4g} -> {s.value:.4g}" for b, s in fallen)
    beside = f"; beside it, the drift from the base model's own text is {drift:.3f} nats per token" if drift is not None else ""
    evidence = {"step": step, "drift_nats": drift,
                "fallen": [{"task": b.task, "metric": b.metric, "base": b.value, "final": s.value, "base_stderr": b.stderr,
                            "final_stderr": s.stderr} for b, s in fallen]}
    return Finding("benchmark_regression", "warning",
                   f"at step {step} a standard benchmark fell by more than two standard errors from the base model: {shown}{beside}",
                   evidence, forgetting_advice(facts))
