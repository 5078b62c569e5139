"""Preparing a run's data as training will see it: the steps of `tunesmith prepare`, shared by the API, the CLI and
the web page, on this side of training (it loads no training code)."""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig, load_config


def as_config(config: RunConfig | str | Path | None) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    return load_config(config)


def prepare(config: RunConfig | str | Path | None = None):
    """Read, clean, split, tokenize and pack the config's data with its model's tokenizer; returns PreparedData."""
    from .data import prepare_data
    from .distill import language_source, resolve_teacher
    from .evaluation.forgetting import BaseSampler, replay_files
    from .models import count_parameters, load_model_config, resolve_model, tunesmith_home
    from .runtime import pick_device, pick_precision
    from .tasks import task_kind

    cfg = as_config(config)
    kind = task_kind(cfg)
    kind.check(cfg)
    resolved = resolve_teacher(cfg.distill.teacher, cfg.model.trust_remote_code) if cfg.distill.student is not None else \
        resolve_model(cfg.model.name, cfg.model.trust_remote_code)  # a student cut from its teacher shares its tokenizer
    params = count_parameters(load_model_config(resolved))
    device = pick_device(cfg.train.device)
    source, called = language_source(cfg, resolved)
    sampler = BaseSampler(source, device, pick_precision(cfg.train.precision, device), source=called) if cfg.data.replay else None
    return prepare_data(cfg.data, cfg.clean, kind.tokenizer(resolved), tunesmith_home(), model_params=params,
                        task=kind.preparer(cfg), replay_files=replay_files(cfg, sampler))


def preview(config: RunConfig | str | Path | None, prepared, count: int) -> list[str]:
    """The first `count` training examples as text, with the spans that carry loss marked ⟦like this⟧."""
    from .data.examples import marked_text
    from .models import resolve_model
    from .tasks import build_task, task_kind

    cfg = as_config(config)
    tokenizer = task_kind(cfg).tokenizer(resolve_model(cfg.model.name, cfg.model.trust_remote_code), log=lambda _: None)
    train = build_task(cfg, prepared.meta).dataset(prepared, "train")
    return [marked_text(train, i, tokenizer) for i in range(min(count, len(train)))]
