"""A distilled run's record of its teacher: the teacher measured once on the validation set (kept in teacher.json, so a
resumed run reads it back), the student's gap to it at each evaluation, and the two side by side in the summary."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..evaluation.scoring import evaluate
from ..rundir.durable import write_atomically
from ..tasks.loss import Validation

TEACHER_FILE = "teacher.json"
TEACHER_TOLERANCE = 0.05  # nats: the same weights measured in another precision (bf16, fp32) or on another machine stay within it


class TeacherRecord:
    def __init__(self, parts, run_dir: Path, batch_size: int, max_blocks: int | None, is_main: bool, log):
        self.parts, self.path, self.log = parts, run_dir / TEACHER_FILE, log
        self.batch_size, self.max_blocks, self.is_main = batch_size, max_blocks, is_main
        self.measured: dict | None = None

    def start(self, resumed: bool = False) -> None:
        """The teacher's validation row: measured now (rank 0), or read back on resume. A resumed run whose teacher's files
        changed (copied, or trained again) measures it again, and is refused where it no longer scores as it did: the
        student would learn from two teachers."""
        teacher = self.parts.teacher
        if teacher is None or not self.is_main:
            return
        identity = teacher.identity
        before = None
        try:
            kept = json.loads(self.path.read_text())
            before = float(kept["val"]["val_loss"])
            if kept["identity"] == json.loads(json.dumps(identity)):
                self.measured = kept
                return
        except (OSError, ValueError, KeyError, TypeError):  # not measured yet, or damaged
            if resumed:  # a checkpoint follows the measurement: the record that would tell a changed teacher is gone
                raise UserError(f"--resume: {self.path} is missing or damaged, so the teacher cannot be checked against "
                                "the one this run started with; restore the file from a copy of the run, or start a new run "
                                "with another --out") from None
        parts = self.parts
        result = evaluate(parts.task, teacher.model, parts.val, parts.tokenizer, self.batch_size, parts.device, parts.precision,
                          self.max_blocks, self.log)
        if resumed and before is not None and abs(result.loss - before) > TEACHER_TOLERANCE:
            raise UserError(f"--resume: the teacher {teacher.spec} is not the one this run started with (its validation loss "
                            f"is {result.loss:.4f} here, {before:.4f} in {self.path}); put that teacher back, or start a new "
                            "run with another --out")
        self.measured = {"teacher": teacher.spec, "identity": identity, "parameters": teacher.parameters,
                         "val": parts.task.eval_row(result)}
        self.log(f"teacher {teacher.spec}: {parts.task.progress_text(result)} on the validation set", highlight=False)
        write_atomically(self.path, json.dumps(self.measured, indent=2) + "\n")

    def gap(self, result: Validation) -> dict:
        """The student's validation loss above the teacher's, for the metrics row."""
        if self.measured is None:
            return {}
        return {"teacher_gap": result.loss - self.measured["val"]["val_loss"]}

    def summary(self, best_row: dict, student_parameters: int, kept: dict | None) -> dict:
        if self.measured is None:
            return {}
        teacher_val = self.measured["val"]
        return {"distill": {"teacher": self.measured["teacher"], "teacher_parameters": self.measured["parameters"],
                            "student_parameters": student_parameters, "teacher_val": teacher_val, "student_val": best_row,
                            "gap_loss": best_row["val_loss"] - teacher_val["val_loss"], **({"student_from": kept} if kept else {})}}
