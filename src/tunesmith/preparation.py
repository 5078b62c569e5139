"""Preparing a run's data as training will see it: the steps of `tunesmith prepare`, shared by the API, the CLI and
the web page, on this side of training (it loads no training code)."""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig, load_config


def as_config(config: RunConfig | str | Path | None) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    return load_config(config)


def tokenizer_model(cfg: RunConfig):
    """The model whose tokenizer the run's data is read with: model.name, or for a student cut from its teacher (which
    shares the teacher's tokenizer; model.name is not used) the teacher, checked as a teacher for this student."""
    from .distill import checked_teacher
    from .models import resolve_model

    if cfg.distill.student is not None:
        return checked_teacher(cfg, log=lambda _: None)
    return resolve_model(cfg.model.name, cfg.model.trust_remote_code)


def check_block_fits(cfg: RunConfig, resolved) -> None:
    """Refuse a block size past the context of the model `resolved` (as `tokenizer_model` gives it), as a run of it
    does before it starts."""
    from .config import check_block_size
    from .models import context_length, load_model_config

    check_block_size(cfg.data.block_size, context_length(load_model_config(resolved)))


def trained_model_config(cfg: RunConfig, resolved):
    """The config of the model the run trains, from `resolved` as `tokenizer_model` gives it: its own, or for a student
    cut from its teacher the teacher's with the kept blocks only (refusing more blocks than the teacher has, as training
    would)."""
    from .distill import student_config
    from .models import load_model_config

    config = load_model_config(resolved)
    if cfg.distill.student is not None:
        cut = cfg.distill.student.from_teacher
        return student_config(config, cut.keep_layers, cut.pick)
    return config


def prepare(config: RunConfig | str | Path | None = None):
    """Read, clean, split, tokenize and pack the config's data with its model's tokenizer; returns PreparedData."""
    from .data import prepare_data
    from .distill import language_source
    from .evaluation.forgetting import BaseSampler, replay_files
    from .models import count_parameters, tunesmith_home
    from .runtime import pick_device, pick_precision
    from .tasks import task_kind

    cfg = as_config(config)
    kind = task_kind(cfg)
    kind.check(cfg)
    resolved = tokenizer_model(cfg)
    check_block_fits(cfg, resolved)
    params = count_parameters(trained_model_config(cfg, resolved))
    device = pick_device(cfg.train.device)
    sampler = None
    if cfg.data.replay:
        sampled, name = language_source(cfg, resolved)
        sampler = BaseSampler(sampled, device, pick_precision(cfg.train.precision, device), source=name)
    return prepare_data(cfg.data, cfg.clean, kind.tokenizer(resolved), tunesmith_home(), model_params=params,
                        task=kind.preparer(cfg), replay_files=replay_files(cfg, sampler))


def preview(config: RunConfig | str | Path | None, prepared, count: int) -> list[str]:
    """The first `count` training examples as text, with the spans that carry loss marked ⟦like this⟧."""
    from .data.examples import marked_text
    from .tasks import build_task, task_kind

    cfg = as_config(config)
    tokenizer = task_kind(cfg).tokenizer(tokenizer_model(cfg), log=lambda _: None)
    train = build_task(cfg, prepared.meta).dataset(prepared, "train")
    return [marked_text(train, i, tokenizer) for i in range(min(count, len(train)))]
