"""Evaluation: the loss, perplexity and task metrics of a model on a dataset; training and `tunesmith eval` both call it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .config import RunConfig
from .data import prepare_eval_data
from .loss import Validation
from .models import context_length, fit_embeddings, load_model, resolve_model, tunesmith_home
from .runtime import pick_device, pick_precision
from .tasks import Task, task_for_model


def evaluate(task: Task, model, dataset, tokenizer, batch_size: int, device: torch.device, precision: str,
             max_blocks: int | None = None, log=print) -> Validation:
    """The task's validation: its loss and metrics."""
    return task.validation(model, dataset, tokenizer, batch_size, device, precision, max_blocks, log)


@dataclass(frozen=True)
class EvalResult:
    model: str
    loss: float
    perplexity: float
    tokens: int
    block_size: int
    accuracy: float
    task: str = "lm"
    metrics: dict | None = None  # the task's: classify's accuracy, macro-F1, per class, confusion; preference's accuracy, log-probs

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_model(spec: str, data: list[str], cfg: RunConfig, log=print) -> EvalResult:
    """Evaluate `spec` (model, .gguf, or run directory) on every unit of `data`, the way its task measures it.

    A chat model (or `--task chat`) is measured on the assistant turns of conversations; a classifier
    on labelled rows, with its label set.
    """
    resolved = resolve_model(spec, cfg.model.trust_remote_code, log=log)
    task = task_for_model(Path(resolved.path), cfg, spec)
    tokenizer = task.tokenizer(resolved, log=log)
    model = load_model(resolved, classifier=task.has_head)
    fit_embeddings(model, tokenizer)
    block_size = min(cfg.data.block_size, context_length(model.config) or cfg.data.block_size)
    data_cfg = cfg.data.model_copy(update={"block_size": block_size})
    prepared = prepare_eval_data(data, data_cfg, cfg.clean, tokenizer, tunesmith_home(), task=task)
    task.bind(prepared.meta)
    device = pick_device(cfg.train.device)
    precision = pick_precision(cfg.train.precision, device)
    model.to(device)
    examples = task.dataset(prepared, "val")
    batch_size = cfg.train.eval_batch_size or (cfg.train.micro_batch_size if isinstance(cfg.train.micro_batch_size, int) else 4)
    result = evaluate(task, model, examples, tokenizer, batch_size, device, precision, log=log)
    return EvalResult(spec, result.loss, result.perplexity, result.tokens, block_size, result.accuracy, task.name, result.task or None)
