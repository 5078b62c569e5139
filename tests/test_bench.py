"""The GPU check script, run end to end on a tiny model on the CPU so that it cannot rot."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_and_both_loops_agree(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for loop in ("tunesmith", "trainer"):  # tokens/s, steps 2+ (tunesmith only), peak RSS
        assert re.search(rf"^{loop}\s+[\d.]+\s+([\d.]+|-)\s+\d+\s", done.stdout, re.M), done.stdout
    ratio = re.search(r"tunesmith / trainer: ([\d.]+)x tokens/s, ([\d.]+)x peak RSS, last-5 loss ([+-][\d.]+)%", done.stdout)
    assert ratio, done.stdout
    assert abs(float(ratio[3])) < 1, done.stdout  # the same model, blocks, order, schedule and precision: the same loss
