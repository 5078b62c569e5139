"""`tunesmith eval MODEL --benchmarks ...`: check the benchmarks, load their tasks, then score each model in turn."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..models import resolve_model
from .model import load_for_benchmarks
from .run import BenchmarkRun, check_limit, load_tasks, quiet_harness, run_benchmarks, write_output
from .scores import compare_lines, score_table
from .selection import select_benchmarks


@dataclass(frozen=True)
class BenchmarkRequest:
    benchmarks: str
    limit: int | None = None
    num_fewshot: int | None = None
    chat_template: bool = False
    output: str | None = None
    precision: str | None = None  # None: a run's own, else auto
    device: str = "auto"
    batch_size: int = 16
    trust_remote_code: bool = False


def _check_output(output: str | None) -> None:
    if output is None:
        return
    path = Path(output)
    if path.exists() or path.is_symlink():  # never overwritten: it may be the task file, the data, or a file of the user's
        raise UserError(f"--output {output} already exists; name a new .json file")
    if not path.parent.is_dir():
        raise UserError(f"--output {output}: name a .json file in an existing folder")


def benchmark_models(specs: list[str], request: BenchmarkRequest, log=print) -> list[tuple[dict, BenchmarkRun]]:
    """Each model's description and lm-eval output; everything the user can get wrong is checked before a model loads."""
    check_limit(request.limit)
    if request.num_fewshot is not None and request.num_fewshot < 0:
        raise UserError(f"--num-fewshot {request.num_fewshot}: the number of examples shown first must be 0 or more")
    _check_output(request.output)
    selection = select_benchmarks(request.benchmarks)
    quiet_harness()
    manager = selection.task_manager()
    for spec in specs[1:]:  # the model to compare with, found before the first one's benchmarks run
        if not Path(os.path.expanduser(spec)).is_dir():
            resolve_model(spec, request.trust_remote_code, log=lambda _message: None)
    tasks = load_tasks(selection, manager)
    done = []
    for spec in specs:
        loaded = load_for_benchmarks(spec, request.device, request.precision, request.trust_remote_code, log)
        if request.chat_template and not getattr(loaded.tokenizer, "chat_template", None):
            raise UserError(f"--chat-template: {spec} has no chat template in its tokenizer; leave the flag out to score "
                            "the items as plain text")
        loaded.description["chat_template"] = request.chat_template
        log(f"{spec}: {len(tasks)} benchmark(s), {loaded.precision} on {loaded.device.type}"
            + (f", {request.limit} items each at most" if request.limit else ""))
        with contextlib.redirect_stdout(sys.stderr):  # lm-eval prints its bootstrap progress; stdout keeps the results alone
            run = run_benchmarks(loaded.harness_lm(request.batch_size), tasks, manager, request.limit, request.num_fewshot,
                                 request.chat_template)
        done.append((loaded.description, run))
        del loaded
        gc.collect()
    if request.output:
        write_output(Path(request.output), done)
    return done


def result_lines(done: list[tuple[dict, BenchmarkRun]]) -> list[str]:
    """The table of each model, then, for two, the comparison."""
    lines = []
    for description, run in done:
        lines += [f"{description['spec']}:", *score_table(run.scores), ""]
    if len(done) == 2:
        names = (done[0][0]["spec"], done[1][0]["spec"])
        lines += [f"{names[0]} -> {names[1]}:", *compare_lines(done[0][1].scores, done[1][1].scores, ("first", "second"))]
    return lines
