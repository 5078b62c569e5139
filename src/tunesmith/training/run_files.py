"""The run directory's files: config.yaml, metrics.jsonl and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import RunConfig


class MetricsLog:
    """Append-only metrics.jsonl; on resume, rows past the checkpoint's step are dropped first."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None or not path.exists():
            path.write_text("")
        else:
            self.truncate_after(resume_step)

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (after a rollback replays those steps)."""
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    (run_dir / "config.yaml").write_text(cfg.to_yaml())


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
