"""The run's recorder: metric rows (metrics.jsonl, TensorBoard and other trackers), sample generations, findings, summary.json."""

from __future__ import annotations

import torch
from rich.console import Console

from ..config import RunConfig
from ..diagnose.rules import RunFacts, diagnose
from ..rundir.folder import METRICS_FILE, SAMPLES_FILE
from .monitor import Trackers
from .run_files import MetricsLog, write_summary
from .samples import SampleLog


class Recorder:
    """Rank 0 writes; on the other ranks every method records in memory only."""

    def __init__(self, cfg: RunConfig, console: Console, is_main: bool):
        self.cfg, self.console, self.is_main = cfg, console, is_main
        self.history: list[dict] = []
        self.reported: set[str] = set()
        self.metrics: MetricsLog | None = None
        self.trackers: Trackers | None = None
        self.samples: SampleLog | None = None

    def open(self, resume_step: int | None, prompts: list[str], stops: list[int], prompts_rendered: bool) -> None:
        """Trackers first: a missing tracker package must fail before any file is written."""
        if not self.is_main:
            return
        run_dir = self.cfg.run_dir
        self.trackers = Trackers(self.cfg.monitor, run_dir, self.cfg, resume=resume_step is not None)
        self.metrics = MetricsLog(run_dir / METRICS_FILE, resume_step, self.console.print)
        self.samples = SampleLog(prompts, stops, prompts_rendered, self.cfg.monitor.sample_tokens, run_dir / SAMPLES_FILE)

    def log_row(self, row: dict) -> None:
        self.history.append(row)
        if self.metrics is not None:
            self.metrics.write(row)
        if self.trackers is not None:
            self.trackers.log(row)

    def truncate_after(self, step: int) -> None:
        if self.metrics is not None:
            self.metrics.truncate_after(step)

    def record_samples(self, step: int, model, tokenizer, device: torch.device, precision: str) -> None:
        """Greedy generations for the fixed prompts (rank 0; the caller skips a sharded model)."""
        if self.samples is None:
            return
        samples = self.samples.write(step, model, tokenizer, device, precision)
        if samples and self.trackers is not None:
            self.trackers.samples(step, samples)

    def add_samples(self, step: int, samples: list[dict]) -> None:
        """Generations the task's validation made itself (GRPO's, with their rewards)."""
        if self.samples is not None and samples:
            self.samples.append(step, samples)
            if self.trackers is not None:
                self.trackers.samples(step, samples)

    def report_findings(self, facts: RunFacts) -> None:
        """Print each warning or error finding once, when it first appears."""
        for finding in diagnose(self.history, facts):
            if finding.severity != "info" and finding.kind not in self.reported:
                self.reported.add(finding.kind)
                advice = "; ".join(f"{a.key}={a.value}" if a.key and a.value is not None else a.why for a in finding.advice[:3])
                self.console.print(f"[{finding.severity}] {finding.kind}: {finding.message} (try: {advice})", highlight=False, markup=False)

    def write_summary(self, summary: dict) -> None:
        if self.is_main:
            write_summary(self.cfg.run_dir, summary)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None
