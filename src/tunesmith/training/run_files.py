"""The run directory's files: config.yaml, metrics.jsonl and summary.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..rundir.durable import write_atomically
from ..rundir.folder import CONFIG_FILE, SUMMARY_FILE, has_step, read_json_lines


class MetricsLog:
    """Append-only metrics.jsonl; on resume, rows past the checkpoint's step are dropped first."""

    def __init__(self, path: Path, resume_step: int | None, log=print):
        self.path, self.log = path, log
        if resume_step is None or not path.exists():
            path.write_text("")
        else:
            self.truncate_after(resume_step)

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (after a rollback replays those steps), and any line torn by a killed process."""
        rows, torn = read_json_lines(self.path)
        if torn:
            self.log(f"{self.path}: dropped {torn} torn line{'s' if torn > 1 else ''} (the process was stopped mid-write)")
        kept = [row for row in rows if has_step(row) and row["step"] <= step]
        write_atomically(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def write(self, row: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    write_atomically(run_dir / CONFIG_FILE, cfg.to_yaml())


def write_summary(run_dir: Path, summary: dict) -> None:
    write_atomically(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def memory_use() -> dict:
    """Resident memory of this process, and the CUDA allocator's peak where there is a GPU, in MB."""
    import psutil

    usage = {"rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        usage["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return usage


class PendingSteps:
    """Per-step results kept on the device until a log point, then read in one host sync.

    Reading a loss with .item() every step would stall a GPU's queue once a step; here that happens
    once per flush, and tokens/s is measured over the steps since the last one.
    """

    def __init__(self, flops_per_token: float | None = None, peak_flops: float | None = None):
        self.items: list[tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor, int]] = []
        self.restart_clock()
        self.last_elapsed = 0.0
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops

    def restart_clock(self) -> None:
        self.started = time.perf_counter()

    def add(self, row: dict, loss: torch.Tensor, applied: torch.Tensor, grad_norm: torch.Tensor, tokens: int) -> None:
        self.items.append((row, loss.detach(), applied, grad_norm.detach(), tokens))

    def flush(self) -> list[dict]:
        if not self.items:
            return []
        values = torch.stack([torch.stack([loss.float(), applied.float(), norm.float()])
                              for _, loss, applied, norm, _ in self.items]).tolist()
        self.last_elapsed = time.perf_counter() - self.started
        tokens_per_s = sum(tokens for *_, tokens in self.items) / max(self.last_elapsed, 1e-9)
        memory = memory_use()
        if self.flops_per_token and self.peak_flops:  # model FLOPs utilization, where the device's peak is known
            memory["mfu"] = round(tokens_per_s * self.flops_per_token / self.peak_flops, 4)
        rows = []
        for (row, *_), (loss, applied, norm) in zip(self.items, values):
            row = {**row, "train_loss": loss, "grad_norm": norm, "tokens_per_s": tokens_per_s, **memory}
            if not applied:
                row["skipped"] = True
            rows.append(row)
        self.items = []
        return rows
