"""The finding of distilled runs: a student that has stopped closing its gap to the teacher.

A pure function from the metric history (each evaluation's `teacher_gap`, the student's validation loss above the
teacher's) and the run's facts, as in `diagnose`, which runs it with the others.
"""

from __future__ import annotations

import math

from .findings import Advice, Finding, RunFacts, figure

STALL_EVALS = 3  # evaluations in a row that must not narrow the gap
NARROWING = 0.02  # of the best gap before them: what the recent evaluations must take off it to count as progress
OPEN_GAP = 0.02  # nats per target: a gap under this is closed, not stalled


def distill_facts(distill: dict, task: object) -> dict:
    """RunFacts' distillation fields from the config's distill section (as a dict) and task; none without a teacher."""
    if not distill.get("teacher"):
        return {}
    from ..tasks import task_view  # the registry, with torch, only for a distilled run
    student = distill.get("student") if isinstance(distill.get("student"), dict) else {}
    cut = student.get("from_teacher") if isinstance(student.get("from_teacher"), dict) else {}
    keep = cut.get("keep_layers")
    return {"distill_hidden": figure(distill.get("hidden")), "distill_keep": len(keep) if isinstance(keep, list) else figure(keep),
            "student_writes_text": task_view(task).writes_text}


def gap_stalled(history: list[dict], facts: RunFacts) -> Finding | None:
    """The student's gap to the teacher has not narrowed in the last evaluations while it is still open.

    Progress is measured against the gap still open, not the starting one: a student cut from the teacher starts
    several nats behind, and a tenth of a nat off a half-nat gap is progress however far it started."""
    rows = [row for row in history if math.isfinite(row.get("teacher_gap", math.nan))]
    if len(rows) < STALL_EVALS + 2:
        return None
    start = rows[0]["teacher_gap"]
    before = min(row["teacher_gap"] for row in rows[:-STALL_EVALS])
    recent = min(row["teacher_gap"] for row in rows[-STALL_EVALS:])
    last = rows[-1]["teacher_gap"]
    if last < OPEN_GAP or before - recent > NARROWING * max(before, OPEN_GAP):
        return None
    return Finding("gap_stalled", "warning",
                   f"the student's validation loss is {last:.3f} nats above the teacher's, and the last {STALL_EVALS} evaluations "
                   f"have not narrowed that gap (from {start:.3f} at the start, best before them {before:.3f}): the student has "
                   "stopped learning from the teacher at these settings",
                   {"start_gap": start, "best_gap_before": before, "best_gap_recent": recent, "gap": last, "evaluations": len(rows)},
                   stalled_advice(facts))


def stalled_advice(facts: RunFacts) -> list[Advice]:
    """What closed the gap on the distillation benchmarks (benchmarks/RESULTS.md and docs/distill.md), most effective
    first, for a language model's student and a classifier's. A larger alpha and a higher temperature are not advised:
    on the KJV benchmark each left the student 6-9% worse."""
    cut = facts.distill_keep is not None
    deeper = ([Advice("distill.student.from_teacher.keep_layers", facts.distill_keep + max(1, facts.distill_keep // 2),
                      "a deeper student, with more room to hold what the teacher knows")] if cut else
              [Advice("", None, "a larger student model (model.name), with more room to hold what the teacher knows")])
    if not facts.student_writes_text:
        advice = []
        if cut:
            advice.append(Advice("", None, "general distillation first: cut the student from the base model and distill it on "
                                 "general text as a language model, then distill the classifier from it (docs/distill.md, "
                                 "\"General distillation first\"): 3.3 points of accuracy on the sentiment benchmark"))
            if not facts.distill_hidden:
                advice.append(Advice("distill.hidden", 1.0, "each kept block also learns its original's output: 1.9 points "
                                     "of accuracy on the sentiment benchmark"))
        return advice + deeper
    advice = [Advice("", None, "more text in the teacher's domain, such as the teacher's continuations of your training texts "
                     "(docs/distill.md, \"More text than the teacher read\"): on the KJV benchmark 400 of them took the "
                     "half-depth student from 15.75 to 14.63")]
    if cut and (facts.lr or 0.0) < 1e-3:
        advice.append(Advice("train.lr", 2e-3, "a student cut from its teacher starts far from a minimum: on the KJV benchmark "
                             "lr 2e-3 left it 21% lower than 3e-4 after one epoch, a lead that narrowed over more epochs "
                             "(4e-3 did worse than 2e-3)"))
    return advice + deeper
