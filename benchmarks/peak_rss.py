"""Run a command in its own process and sample the resident memory of its process tree every 50 ms: the peak is its own.

`limit_mb` stops the command (SIGKILL to its tree) as soon as a sample exceeds it, so that a measurement that
would not fit fails on its own instead of waking the kernel's out-of-memory killer, which may pick another process.
"""

from __future__ import annotations

import subprocess
import time

import psutil


def _kill_tree(parent: psutil.Process) -> None:
    for process in parent.children(recursive=True) + [parent]:
        try:
            process.kill()
        except psutil.Error:
            pass


def run_with_peak_rss(command: list[str], quiet_stdout: bool = False, env: dict | None = None,
                      limit_mb: float | None = None) -> tuple[int, str, str, float]:
    """The return code, stdout, stderr and peak RSS in MB of `command` (its worker processes included).

    Past `limit_mb` the command is killed: its return code is then -9 and its stderr ends with a line that says so.
    """
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL if quiet_stdout else subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    parent, peak, stopped = psutil.Process(process.pid), 0, False
    while process.poll() is None:
        try:
            tree = [parent] + parent.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        if limit_mb is not None and peak > limit_mb * 2**20 and not stopped:
            _kill_tree(parent)
            stopped = True
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if stopped:
        stderr += f"\nstopped: resident memory passed the limit of {limit_mb:.0f} MB\n"
    return process.returncode, stdout or "", stderr or "", peak / 2**20
