"""When torch.compile repays itself, and where its cache lives.

On a CPU compiling costs a minute or two of C++ compilation and gains a few percent, so `train.compile: auto`
measures the first eager steps and compiles only when the steps left would save more time than compiling takes
(`benchmarks/bench_train.py --mode compile`). On CUDA `auto` stays eager: a compiled GPT-2-small step on an H200
ran at 0.75x the eager one's speed, before the compilation's own cost.
"""

from __future__ import annotations

import os
import shutil
import statistics
from pathlib import Path

EAGER_STEPS = 3  # steps timed before deciding; the first one warms up and is not counted


def use_cache_under(home: Path) -> None:
    """Inductor's compiled kernels under $TUNESMITH_HOME, so a second run with the same shapes compiles from cache."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(home / "inductor"))


def cpu_compiler_available() -> bool:
    """Inductor turns the CPU graph into C++: without a compiler, compiling would only fail."""
    return bool(shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++"))


def compile_cost(method: str) -> tuple[float, float]:
    """(seconds that compiling adds to the first step, speed-up of the steps after it): the method's own figures."""
    from ..methods import method_of

    return method_of(method).cpu_compile


def seconds_saved(method: str, step_seconds: float, steps_left: int) -> float:
    """What compiling now would save on the rest of a CPU run, net of the compilation."""
    seconds, gain = compile_cost(method)
    return steps_left * step_seconds * (1 - 1 / gain) - seconds


class CompileWhenItRepays:
    """Times the first eager steps of a CPU run, then compiles once if the rest of the run repays it."""

    def __init__(self, runner, total_steps: int, method: str, log):
        self.runner, self.total_steps, self.method, self.log = runner, total_steps, method, log
        self.seconds: list[float] = []
        self.decided = False

    def step_done(self, step: int, seconds: float) -> None:
        if self.decided:
            return
        self.seconds.append(seconds)
        if len(self.seconds) < EAGER_STEPS:
            return
        self.decided = True
        step_seconds = statistics.median(self.seconds[1:])
        steps_left = self.total_steps - step
        saved = seconds_saved(self.method, step_seconds, steps_left)
        if saved > 0:
            self.log(f"train.compile auto: compiling the step ({steps_left} steps of {step_seconds:.1f} s left; about "
                     f"{saved:.0f} s saved after {compile_cost(self.method)[0]:.0f} s of compiling)")
            self.runner.compile()
