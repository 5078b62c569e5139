"""The Python API: the same steps as the CLI, taking a RunConfig (or a YAML path) and returning plain results."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .config import RunConfig, load_config


def _as_config(config: RunConfig | str | Path | None) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    return load_config(config)


def prepare(config: RunConfig | str | Path | None = None):
    """Read, clean, split, tokenize and pack the config's data with its model's tokenizer; returns PreparedData."""
    from .data import prepare_data
    from .forgetting import BaseSampler, replay_files
    from .models import count_parameters, load_model_config, resolve_model, tunesmith_home
    from .runtime import pick_device, pick_precision
    from .tasks import build_task

    cfg = _as_config(config)
    task = build_task(cfg)
    resolved = resolve_model(cfg.model.name, cfg.model.trust_remote_code)
    params = count_parameters(load_model_config(resolved))
    device = pick_device(cfg.train.device)
    sampler = BaseSampler(resolved, device, pick_precision(cfg.train.precision, device)) if cfg.data.replay else None
    return prepare_data(cfg.data, cfg.clean, task.tokenizer(resolved), tunesmith_home(), model_params=params, task=task,
                        replay_files=replay_files(cfg, sampler))


def preview(config: RunConfig | str | Path | None, prepared, count: int) -> list[str]:
    """The first `count` training examples as text, with the spans that carry loss marked ⟦like this⟧."""
    from .data.examples import marked_text
    from .models import resolve_model
    from .tasks import build_task

    cfg = _as_config(config)
    task = build_task(cfg)
    tokenizer = task.tokenizer(resolve_model(cfg.model.name, cfg.model.trust_remote_code), log=lambda _: None)
    task.bind(prepared.meta)
    train = task.dataset(prepared, "train")
    return [marked_text(train, i, tokenizer) for i in range(min(count, len(train)))]


def train(config: RunConfig | str | Path | None = None, resume: bool = False, console: Console | None = None,
          force: bool = False) -> dict:
    """Fine-tune per the config; returns the run's summary (also written to <run>/summary.json) and writes the report.

    `force` writes the run into an `output.dir` that holds other files; without it such a folder is refused.
    """
    import os

    from .report import write_report
    from .training import train_run

    summary = train_run(_as_config(config), resume=resume, console=console, force=force)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone writes files
        write_report(Path(summary["run_dir"]))
    return summary


def evaluate(model: str, data: str | list[str], config: RunConfig | str | Path | None = None):
    """Loss and perplexity of `model` (spec, .gguf or run directory) on `data`; returns an EvalResult."""
    from .evaluation import evaluate_model

    paths = [data] if isinstance(data, (str, Path)) else list(data)
    return evaluate_model(model, [str(p) for p in paths], _as_config(config))


def generate(model: str, prompt: str, **options) -> str:
    """The continuation of `prompt`; options are those of SamplingOptions (max_new_tokens, temperature, ...)."""
    from .generation import SamplingOptions, generate_text, load_generator

    loaded, tokenizer = load_generator(model)
    return generate_text(loaded, tokenizer, prompt, SamplingOptions(**options))
