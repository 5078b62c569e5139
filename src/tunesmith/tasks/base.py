"""The Task: everything that differs between kinds of fine-tuning, in one object built once from the config.

A task names its units and how they become tokens (the `data.units.UnitKind` side, which `prepare`
drives), its dataset for a split, its metrics and the score that picks the best step, the spec saved
with the model, its part of the summary, and its sample prompts. The run, evaluation and the CLI call
these methods and never ask which task it is; a new task is a new subclass and one line in `TASKS`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import torch

from ..config import DataConfig, MonitorConfig, RunConfig
from ..data.report import DataReport
from ..data.units import FIELDS_HINT
from ..errors import ConfigError, UserError
from ..models import load_tokenizer
from .loss import Validation, perplexity, validation_loss_with_fallback


class Task:
    name: ClassVar[str]
    layout: ClassVar[str] = "examples"
    unit_words: ClassVar[str] = "examples"  # what the data report calls the units
    eval_units: ClassVar[str] = "examples"  # what the validation set holds, as the run prints it
    target_words: ClassVar[str] = "targets"  # what carries the loss
    prompts_rendered: ClassVar[bool] = False  # sample prompts already carry the template's special tokens
    needs_saved_spec: ClassVar[bool] = False  # evaluation needs a model trained for this task (a classifier's labels)
    packings: ClassVar[tuple[str, ...]] = ("documents", "padded")  # the data.packing values it takes; the first is auto's
    noisy_embeddings: ClassVar[bool] = False  # whether train.neftune_alpha applies (instruction-style data)
    fields_hint: ClassVar[str] = FIELDS_HINT  # what to check when every record was dropped
    rows_per_example: ClassVar[int] = 1  # sequences a training example puts in a batch (a preference pair: two)
    rehearses: ClassVar[bool] = False  # whether data.replay can mix general text into its training data

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.packing()
        if cfg.train.neftune_alpha and not self.noisy_embeddings:
            raise ConfigError([f"train.neftune_alpha: NEFTune applies to chat and instruction data, not to task {self.name}; set it to 0"])
        if cfg.data.replay and not self.rehearses:
            raise ConfigError([f"data.replay: rehearsal text mixes into plain-text training (task lm), not task {self.name}; "
                               "set it to 0, or mix general data in as a weighted source of data.train"])

    @classmethod
    def for_saved(cls, spec: dict, cfg: RunConfig) -> "Task":
        """The task that evaluates a model saved with `spec` (its tunesmith_task.json) on new data."""
        return cls(cfg)

    # the model
    def tokenizer(self, resolved, log=print):
        return load_tokenizer(resolved)

    @property
    def has_head(self) -> bool:
        """Whether the model is a classifier with a head rather than a language model."""
        return False

    def probe_skip_reason(self, model_config) -> str | None:
        """Why the forgetting probe cannot score text with this task's model, or None when it can."""
        return None

    def language_model(self, model: torch.nn.Module):
        """Next-token logits of (input ids, attention mask), for the forgetting probe."""
        return lambda ids, attention: model(input_ids=ids, attention_mask=attention, use_cache=False).logits

    def head_labels(self) -> list[str] | None:
        """The classes of a classification head, when the model needs one instead of its language-model output."""
        return None

    # preparation (data.units.UnitKind); `bind` takes what the prepared data fixed, from its meta.json
    def cache_settings(self) -> dict:
        return {"task": self.name}

    def begin(self, reader, files: list[Path]) -> None:
        pass

    def finish(self, train, val, data: DataConfig, report: DataReport, eval_only: bool) -> dict:
        return {"task": self.name}

    def bind(self, meta: dict) -> None:
        pass

    # datasets
    def packing(self) -> str:
        """`data.packing` for this task: auto is the task's first choice; one it cannot use is a config error."""
        chosen = self.cfg.data.packing
        if chosen == "auto":
            return self.packings[0]
        if chosen not in self.packings:
            raise ConfigError([f"data.packing: {chosen} does not apply to task {self.name}; use {' or '.join(self.packings)} (or auto)"])
        return chosen

    def confine(self, model_keeps_apart: bool, log=print) -> None:
        """Before training: where the model cannot keep packed documents apart, auto falls back to padding."""
        if model_keeps_apart or self.packing() != "documents":
            return
        fallback = "padded" if "padded" in self.packings else self.packings[0]
        if self.cfg.data.packing == "documents" or fallback != "padded":
            raise ConfigError(["data.packing: documents needs a model whose attention follows restarting position ids "
                               f"(transformers' masking utilities); this one does not: use data.packing: {fallback}"])
        log("data.packing auto: this model cannot keep packed examples apart; padding each example instead")
        self.cfg = self.cfg.model_copy(update={"data": self.cfg.data.model_copy(update={"packing": "padded"})})

    def dataset(self, prepared, split: str, training: bool = False):
        return self.packed(prepared.blocks(split), training)

    def packed(self, examples, training: bool):
        """Training examples packed into rows of data.block_size tokens (with packing documents); evaluation's stay padded."""
        from ..data.examples import PackedExamples

        return PackedExamples(examples, self.cfg.data.block_size) if training and self.packing() == "documents" else examples

    def training_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the training step calls: the model itself, unless the task's packed batches need a wrapper."""
        return model

    def training_loss(self, module: torch.nn.Module):
        """The task's own training loss on `module` (the training module, maybe wrapped for DDP); None: next-token cross-entropy."""
        return None

    def before_training(self, model: torch.nn.Module, prepared, resolved, device: torch.device, precision: str, batch_size: int,
                        log=print) -> None:
        """What the task needs from the model before its weights change (a preference reference)."""

    def example_lengths(self, dataset) -> list[int] | None:
        """Each training example's length, for length-aware batching; None for equal-length packed blocks."""
        return [dataset.length(i) for i in range(len(dataset))]

    # evaluation
    def validation(self, model, dataset, tokenizer, batch_size: int, device: torch.device, precision: str,
                   max_blocks: int | None = None, log=print) -> Validation:
        """The validation loss (halving the batch on out-of-memory) and the task's metrics."""
        result = validation_loss_with_fallback(model, dataset, batch_size, device, precision, max_blocks, log)
        return replace(result, task=self.metrics(model, dataset, tokenizer, batch_size, device, precision, max_blocks))

    def metrics(self, model, dataset, tokenizer, batch_size: int, device: torch.device, precision: str,
                limit: int | None = None) -> dict:
        """Task metrics beyond the loss (accuracy, macro-F1, ...), stored in `Validation.task`."""
        return {}

    def score(self, result: Validation) -> float:
        """What picks the best step and drives early stopping; lower is better."""
        return result.loss

    def eval_row(self, result: Validation) -> dict:
        return {"val_loss": result.loss, "val_ppl": perplexity(result.loss), "val_accuracy": result.accuracy}

    def progress_text(self, result: Validation) -> str:
        """The last evaluation, as the progress line shows it."""
        return f"val ppl {result.perplexity:.2f}"

    def base_lines(self, result: Validation, dataset) -> list[str]:
        return [f"base model: validation loss {result.loss:.4f}, perplexity {result.perplexity:.2f} "
                f"({len(dataset)} {self.eval_units}, {dataset.num_tokens:,} {self.target_words})"]

    # what is saved and reported
    def spec(self, tokenizer) -> dict:
        """Saved as final/tunesmith_task.json: how `chat`, `predict`, `serve` and `eval` use the model."""
        return {"task": self.name}

    def summary(self, base_metrics: dict, best_metrics: dict, val_dataset) -> dict:
        return {"task": self.name}

    def sample_prompts(self, monitor: MonitorConfig, val_dataset, tokenizer) -> list[str]:
        return []

    def reference_pairs(self, val_dataset, tokenizer, count: int, new_tokens: int) -> list[tuple[list[int], str]]:
        """Up to `count` validation prompts (token ids) with the text the data follows them with, which generations
        are scored against (`eval --generate`); none for a task that does not generate text."""
        return []

    def sample_stops(self, tokenizer) -> list[int]:
        return [tokenizer.eos_token_id]

    # planning (`recommend`), from raw records before any preparation
    def record_label(self, record_value) -> str | None:
        return None

    def head_classes(self, labels: int) -> int:
        return 0

    @property
    def section(self) -> str | None:
        """The config section of the task's own settings, if it has one."""
        return None


def check_both_sides(train, val, words: str, eval_only: bool) -> None:
    if val.documents == 0 or (train.documents == 0 and not eval_only):
        raise UserError(f"{train.documents} training and {val.documents} validation {words} after cleaning; "
                        "at least one of each is needed: add data or pass a validation file with --val-data")
