"""The Python API: the same steps as the CLI, taking a RunConfig (or a YAML path) and returning plain results."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .config import RunConfig
from .preparation import as_config as _as_config
from .preparation import prepare, preview


def train(config: RunConfig | str | Path | None = None, resume: bool = False, console: Console | None = None,
          force: bool = False, judge=None) -> dict:
    """Fine-tune per the config; returns the run's summary (also written to <run>/summary.json) and writes the report.

    `force` writes the run into an `output.dir` that holds other files; without it such a folder is refused.
    `judge(step, metrics_row) -> bool` hears each evaluation; True ends the run as pruned (its checkpoint kept).
    """
    import os

    from .planning.preflight import check_memory_fits
    from .report.writer import write_report
    from .rundir.folder import as_started
    from .training import train_run

    config = _as_config(config)
    if resume:
        config = as_started(config)  # the memory check plans the model the run was started with
    check_memory_fits(config, log=console.print if console else print)  # on a CPU the kernel kills a run that does not fit
    summary = train_run(config, resume=resume, console=console, force=force, judge=judge)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone writes files
        write_report(Path(summary["run_dir"]))
    return summary


def evaluate(model: str, data: str | list[str], config: RunConfig | str | Path | None = None):
    """Loss and perplexity of `model` (spec, .gguf or run directory) on `data`; returns an EvalResult."""
    from .evaluation.scoring import evaluate_model

    paths = [data] if isinstance(data, (str, Path)) else list(data)
    return evaluate_model(model, [str(p) for p in paths], _as_config(config))


def generate(model: str, prompt: str, **options) -> str:
    """The continuation of `prompt`; options are those of SamplingOptions (max_new_tokens, temperature, ...)."""
    from .inference.generation import SamplingOptions, generate_text, load_generator

    loaded, tokenizer = load_generator(model)
    return generate_text(loaded, tokenizer, prompt, SamplingOptions(**options))


__all__ = ["evaluate", "generate", "prepare", "preview", "train"]
