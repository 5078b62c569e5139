"""Benchmark figures as rows (task, metric, value, standard error), as a table, side by side, and as metrics-row keys."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SKIPPED = {"alias", "name", "sample_len", "samples", " "}
ROW_PREFIX = "bench/"  # metrics.jsonl keys: bench/<task>/<metric> and bench/<task>/<metric>_stderr


@dataclass(frozen=True)
class Score:
    task: str
    metric: str
    value: float
    stderr: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def scores_of(results: dict) -> list[Score]:
    """lm-eval's `results` section ({task: {"acc,none": v, "acc_stderr,none": se, ...}}) as scores, in its order.

    A metric's filter is kept in its name only when it is not lm-eval's default ("none").
    """
    scores = []
    for task, figures in results.items():
        for key, value in figures.items():
            metric, _, kept = key.partition(",")
            if metric in SKIPPED or metric.endswith("_stderr") or _number(value) is None:
                continue
            stderr = _number(figures.get(f"{metric}_stderr,{kept}"))
            scores.append(Score(task, metric if kept in ("", "none") else f"{metric}-{kept}", float(value), stderr))
    return scores


def _value(score: Score) -> str:
    return f"{score.value:.4f}" if abs(score.value) < 100 else f"{score.value:.2f}"


def _stderr(score: Score | None) -> str:
    return "" if score is None or score.stderr is None else _value(Score(score.task, score.metric, score.stderr))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]


def score_table(scores: list[Score]) -> list[str]:
    """One line per (task, metric): value and standard error."""
    return _table(["task", "metric", "value", "stderr"], [[s.task, s.metric, _value(s), _stderr(s)] for s in scores])


def beyond_two_stderr(first: Score, second: Score) -> bool | None:
    """Whether the difference exceeds two standard errors of the difference (the two errors combined); None without errors."""
    if first.stderr is None or second.stderr is None:
        return None
    spread = math.hypot(first.stderr, second.stderr)
    return abs(second.value - first.value) > 2 * spread if spread > 0 else second.value != first.value


def compare_lines(first: list[Score], second: list[Score], names: tuple[str, str]) -> list[str]:
    """The two models side by side on the scores both have: values, the difference, and whether it is beyond 2 standard errors."""
    other = {(s.task, s.metric): s for s in second}
    rows = []
    for score in first:
        pair = other.get((score.task, score.metric))
        if pair is None:
            continue
        beyond = beyond_two_stderr(score, pair)
        rows.append([score.task, score.metric, _value(score), _value(pair), f"{pair.value - score.value:+.4f}",
                     {True: "yes", False: "no", None: "?"}[beyond]])
    return _table(["task", "metric", names[0], names[1], "difference", "beyond 2 stderr"], rows)


def row_of(scores: list[Score]) -> dict[str, float]:
    """Scores as flat metrics-row keys, which TensorBoard groups by their prefix."""
    row = {}
    for score in scores:
        row[f"{ROW_PREFIX}{score.task}/{score.metric}"] = score.value
        if score.stderr is not None:
            row[f"{ROW_PREFIX}{score.task}/{score.metric}_stderr"] = score.stderr
    return row


def scores_from_row(row: dict) -> list[Score]:
    """The scores a metrics row holds (the inverse of row_of)."""
    scores = []
    for key, value in row.items():
        if not key.startswith(ROW_PREFIX) or key.endswith("_stderr"):
            continue
        task, _, metric = key.removeprefix(ROW_PREFIX).rpartition("/")
        scores.append(Score(task, metric, value, row.get(f"{key}_stderr")))
    return scores
