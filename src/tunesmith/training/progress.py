"""Progress display: a live bar on a terminal, plain log lines otherwise (CI, files, pipes)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, console: Console, total_steps: int, start_step: int, log_every: int):
        self.console = console
        self.total = total_steps
        self.log_every = log_every
        self.started = time.perf_counter()
        self.start_step = start_step
        self.evaluation = ""  # the task's summary of the last evaluation
        self.bar: Progress | None = None
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.bar.add_task("train", total=total_steps, completed=start_step, stats="")
            self.bar.start()

    def _stats(self, loss: float, tokens_per_s: float) -> str:
        evaluation = f"  {self.evaluation}" if self.evaluation else ""
        return f"loss {loss:.4f}{evaluation}  {tokens_per_s:,.0f} tok/s"

    def step(self, step: int, loss: float, tokens_per_s: float) -> None:
        stats = self._stats(loss, tokens_per_s)
        if self.bar is not None:
            self.bar.update(self.task, completed=step, stats=stats)
        elif step % self.log_every == 0 or step == self.total:
            done = step - self.start_step
            elapsed = time.perf_counter() - self.started
            eta = elapsed / done * (self.total - step) if done else 0.0
            self.console.print(f"step {step}/{self.total}  {stats}  eta {eta:,.0f}s", highlight=False)

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def evaluated(self, text: str) -> None:
        self.evaluation = text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
