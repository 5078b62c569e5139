"""What every benchmark prints beside its figures: the machine they were measured on."""

from __future__ import annotations

import subprocess


def cpu_name() -> str:
    """`lscpu`'s model name: figures from different CPUs (AMX or only AVX512-BF16) are not comparable."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"
