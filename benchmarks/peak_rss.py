"""Run a command in its own process and sample the resident memory of its process tree every 50 ms: the peak is its own."""

from __future__ import annotations

import subprocess
import time

import psutil


def run_with_peak_rss(command: list[str], quiet_stdout: bool = False, env: dict | None = None) -> tuple[int, str, str, float]:
    """The return code, stdout, stderr and peak RSS in MB of `command` (its worker processes included)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL if quiet_stdout else subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    parent, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [parent] + parent.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    return process.returncode, stdout or "", stderr or "", peak / 2**20
