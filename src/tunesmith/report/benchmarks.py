"""The run report's benchmark part (monitor.benchmarks): base and final scores as comparison rows, and a curve over the
run when it was scored more than twice (monitor.benchmark_every: eval).
"""

from __future__ import annotations

from ..diagnose.benchmarks import LOWER_IS_BETTER
from ..harness.scores import ROW_PREFIX, scores_from_row


def benchmark_rows(summary: dict) -> list[tuple[str, float | None, float | None]]:
    """(name, base, final) for each score summary.json holds: the report's base-against-fine-tuned table takes them."""
    bench = summary.get("benchmarks") or {}
    final = {(s["task"], s["metric"]): s for s in bench.get("final", [])}
    rows = []
    for score in bench.get("base", []):
        after = final.get((score["task"], score["metric"]), {})
        rows.append((f"{score['task']} {score['metric']} (benchmark, {bench.get('limit')} items)", score["value"], after.get("value")))
    return rows


def benchmark_curves(metrics: list[dict]) -> dict[tuple[str, str], list[tuple[int, float, float]]]:
    """(task, metric) -> [(step, value, stderr)] over the run, for the scores where higher is better (one shared scale)."""
    curves: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for row in metrics:
        if not any(key.startswith(ROW_PREFIX) for key in row):
            continue
        for score in scores_from_row(row):
            if score.metric not in LOWER_IS_BETTER:
                curves.setdefault((score.task, score.metric), []).append((row["step"], score.value, score.stderr or 0.0))
    return {key: points for key, points in curves.items() if len(points) > 2}


def draw_benchmarks(curves: dict[tuple[str, str], list[tuple[int, float, float]]]):
    """A drawing function for report.plots: each score against the step, with two standard errors as bars."""

    def benchmarks(axis):
        for (task, metric), points in curves.items():
            steps, values, errors = zip(*points)
            axis.errorbar(steps, values, yerr=[2 * e for e in errors], marker="o", capsize=3, label=f"{task} {metric}")
        axis.set_xlabel("step")
        axis.set_ylabel("benchmark score (bars: 2 standard errors)")
        axis.legend()

    return benchmarks
