"""The Task: everything that differs between kinds of fine-tuning, in three objects per task.

- `TaskKind`: what the config alone decides (one instance per task, registered in `TASKS`): the checks, how the
  data is prepared (a `data.units.UnitKind` from `preparer`), the tokenizer, the packing, what planning needs,
  and `build`, which makes the run-time task.
- `Task`: what a run calls, built once from the run's settled config, its prepared data's meta and, for a task
  that compares with the model before training, that reference (`TaskKind.reference`), and never changed
  afterwards: the datasets, the loss, the validation and its score, and what is saved and reported.
- `TaskView` (`view.py`): how a finished run's results read.
The run, evaluation and the CLI call these and never ask which task it is; a new task is one module and one
line in `TASKS` and `VIEWS`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch

from ..config import MonitorConfig, RunConfig
from ..data.units import TextUnits, UnitKind
from ..errors import ConfigError, UserError
from ..measures import perplexity
from ..models import load_tokenizer
from .loss import Validation, validation_loss_with_fallback


class TaskKind:
    """What the config alone decides for a task (one instance per task, in `TASKS`): its checks, how its data is
    prepared, the tokenizer, the packing, what planning needs, and the run-time `Task` it builds for a run."""

    builds: ClassVar[type[Task]]  # the run-time task a run of this kind calls
    name: ClassVar[str]
    learns: ClassVar[str]  # what a run of this task learns, in a few words (the config reference lists it)
    section: ClassVar[str | None] = None  # the config section of the task's own settings, if it has one
    also_reads: ClassVar[tuple[str, ...]] = ()  # other tasks' sections it reads too (the chat section's data format)
    packings: ClassVar[tuple[str, ...]] = ("documents", "padded")  # the data.packing values it takes; the first is auto's
    rows_per_example: ClassVar[int] = 1  # sequences a training example puts in a batch (a preference pair: two)
    noisy_embeddings: ClassVar[bool] = False  # whether train.neftune_alpha applies (instruction-style data)
    rehearses: ClassVar[bool] = False  # whether data.replay can mix general text into its training data
    needs_saved_spec: ClassVar[bool] = False  # evaluation needs a model trained for this task (a classifier's labels)
    distills: ClassVar[bool] = False  # whether a teacher can guide it (distill.teacher): the loss is cross-entropy on fixed targets

    def example_rows(self, cfg: RunConfig) -> int:
        """Sequences a training example puts in a batch under this config, for the memory estimates."""
        return self.rows_per_example

    def fewer_rows(self, rows: int) -> str | None:
        """The setting that puts `rows` sequences per example in a batch, where the task has one (None: it has not)."""
        return None

    def frozen_copies(self, cfg: RunConfig) -> int:
        """Frozen copies of the model a run holds beside it (a reference without LoRA adapters to switch off)."""
        return 0

    def check(self, cfg: RunConfig) -> None:
        """Refuse, with every key named, settings this task cannot take."""
        self.packing_of(cfg)
        if cfg.train.neftune_alpha and not self.noisy_embeddings:
            raise ConfigError([f"train.neftune_alpha: NEFTune applies to chat and instruction data, not to task {self.name}; set it to 0"])
        self.check_distill(cfg)
        if cfg.data.replay and not self.rehearses:
            raise ConfigError([f"data.replay: rehearsal text mixes into plain-text training (task lm), not task {self.name}; "
                               "set it to 0, or mix general data in as a weighted source of data.train"])

    def check_distill(self, cfg: RunConfig) -> None:
        settings = cfg.distill
        if settings.teacher is None:  # a student or hidden term without one is refused with the config
            return
        if not self.distills:
            raise ConfigError([f"distill.teacher: distillation applies to tasks lm, chat and classify, not {self.name}; "
                               "remove the distill section"])
        if settings.cache == "topk" and self.has_head(cfg):
            raise ConfigError(["distill.cache: topk applies to a language model's vocabulary; a classifier's teacher scores "
                               "its few classes beside it: use distill.cache: none"])
        if settings.hidden and settings.cache == "topk":
            raise ConfigError(["distill.hidden: the top-k cache holds the teacher's log-probabilities, not its hidden states; "
                               "use distill.cache: none (the teacher beside the student), or set distill.hidden to 0"])
        if settings.hidden and cfg.train.compile is True:
            raise ConfigError(["distill.hidden: the hooks that catch each block's output do not compile; use train.compile: "
                               "auto or false, or set distill.hidden to 0"])

    def packing_of(self, cfg: RunConfig) -> str:
        """`data.packing` for this task: auto is the task's first choice; one it cannot use is a config error."""
        chosen = cfg.data.packing
        if chosen == "auto":
            return self.packings[0]
        if chosen not in self.packings:
            raise ConfigError([f"data.packing: {chosen} does not apply to task {self.name}; use {' or '.join(self.packings)} (or auto)"])
        return chosen

    def settle(self, cfg: RunConfig, model_keeps_apart: bool, log=print) -> RunConfig:
        """The config a run trains with: where the model cannot keep packed documents apart, auto falls back to padding."""
        if model_keeps_apart or self.packing_of(cfg) != "documents":
            return cfg
        fallback = "padded" if "padded" in self.packings else self.packings[0]
        if cfg.data.packing == "documents" or fallback != "padded":
            raise ConfigError(["data.packing: documents needs a model whose attention follows restarting position ids "
                               f"(transformers' masking utilities); this one does not: use data.packing: {fallback}"])
        log("data.packing auto: this model cannot keep packed examples apart; padding each example instead")
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"packing": "padded"})})

    def for_saved(self, spec: dict, cfg: RunConfig) -> RunConfig:
        """The config that evaluates a model saved with `spec` (its tunesmith_task.json) on new data."""
        return cfg

    def preparer(self, cfg: RunConfig, saved: dict | None = None) -> UnitKind:
        """The task's side of `prepare`: its units and how each becomes tokens (`saved`: a trained model's spec)."""
        return TextUnits()

    def tokenizer(self, resolved, log=print):
        return load_tokenizer(resolved)

    def has_head(self, cfg: RunConfig) -> bool:
        """Whether the model is a classifier with a head rather than a language model."""
        return False

    def probe_skip_reason(self, cfg: RunConfig, model_config) -> str | None:
        """Why the forgetting probe cannot score text with this task's model, or None when it can."""
        return None

    def head_labels(self, cfg: RunConfig, meta: dict) -> list[str] | None:
        """The classes of a classification head, when the model needs one instead of its language-model output."""
        return None

    def reference(self, cfg: RunConfig, meta: dict, model: torch.nn.Module, prepared, resolved, device: torch.device,
                  precision: str, batch_size: int, log=print):
        """What the task needs from the model before its weights change, handed to the task as it is built (a
        preference run's reference); None for most tasks."""
        return None

    def record_label(self, cfg: RunConfig, record_value) -> str | None:
        """`recommend`'s look at a raw record: its label, for a task that has labels."""
        return None

    def head_classes(self, cfg: RunConfig, label_count: int) -> int:
        """The outputs of the classification head for `label_count` labels; 0 for a model without a head (planning)."""
        return 0

    def build(self, cfg: RunConfig, meta: dict, reference=None) -> Task:
        """The run-time task, from the settled config (`settle`), the prepared data's meta and, where the task needs
        one, its reference (`reference`)."""
        return self.builds(self, cfg, meta, reference)


class Task:
    """What a run calls, built once (`TaskKind.build`) from the run's settled config, its prepared data's meta and,
    for a task that compares with the model before training, that reference; never changed afterwards."""

    eval_units: ClassVar[str] = "examples"  # what the validation set holds, as the run prints it
    steps_per_batch: int = 1  # optimizer steps on each batch of examples (GRPO's grpo.iterations)
    target_words: ClassVar[str] = "targets"  # what carries the loss
    prompts_rendered: ClassVar[bool] = False  # sample prompts already carry the template's special tokens

    def __init__(self, kind: TaskKind, cfg: RunConfig, meta: dict, reference=None):
        """`kind` the task's config-level side, `cfg` the run's config (settled, see `TaskKind.settle`, where it trains),
        `meta` the prepared data's meta.json, `reference` what `TaskKind.reference` computed before training."""
        self.kind, self.cfg = kind, cfg
        self.packing = kind.packing_of(cfg)

    @property
    def name(self) -> str:
        return self.kind.name

    def dataset(self, prepared, split: str, training: bool = False):
        return self._packed(prepared.split(split), training)

    def _packed(self, examples, training: bool):
        """Training examples packed into rows of data.block_size tokens (with packing documents); evaluation's stay padded."""
        if training and self.packing == "documents":
            from ..data.examples import PackedExamples

            return PackedExamples(examples, self.cfg.data.block_size)
        return examples

    def example_lengths(self, dataset) -> list[int] | None:
        """Each training example's length, for length-aware batching; None for equal-length packed blocks."""
        return [dataset.length(i) for i in range(len(dataset))]

    def training_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the training step calls: the model itself, unless the task's packed batches need a wrapper."""
        return model

    def training_loss(self, module: torch.nn.Module):
        """The task's own training loss on `module` (the training module, maybe wrapped for DDP); None: next-token cross-entropy."""
        return None

    def rollouts(self, dataset, model: torch.nn.Module, tokenizer, device: torch.device, precision: str):
        """For a task whose training examples are made while it trains (GRPO's sampled completions), the dataset that makes
        them from `dataset` with `model`, with `begin_step`, `end_step`, `state` and `load` for the loop; None for fixed data."""
        return None

    def probe_logits(self, model: torch.nn.Module):
        """Next-token logits of (input ids, attention mask), for the forgetting probe."""
        return lambda ids, attention: model(input_ids=ids, attention_mask=attention, use_cache=False).logits

    def validation(self, model, dataset, tokenizer, batch_size: int, device: torch.device, precision: str,
                   max_blocks: int | None = None, log=print) -> Validation:
        """The validation loss (halving the batch on out-of-memory) and the task's metrics."""
        result = validation_loss_with_fallback(model, dataset, batch_size, device, precision, max_blocks, log)
        return replace(result, metrics=self._metrics(model, dataset, tokenizer, batch_size, device, precision, max_blocks))

    def _metrics(self, model, dataset, tokenizer, batch_size: int, device: torch.device, precision: str,
                 limit: int | None = None) -> dict:
        """Task metrics beyond the loss (accuracy, macro-F1, ...), stored in `Validation.metrics`."""
        return {}

    def score(self, result: Validation) -> float:
        """What picks the best step and drives early stopping; lower is better."""
        return result.loss

    def made_samples(self, result: Validation) -> list[dict]:
        """Generations the validation made itself, for samples.jsonl (GRPO's held-out completions with their rewards)."""
        return []

    def eval_row(self, result: Validation) -> dict:
        return {"val_loss": result.loss, "val_ppl": perplexity(result.loss), "val_accuracy": result.accuracy}

    def progress_text(self, result: Validation) -> str:
        """The last evaluation, as the progress line shows it."""
        return f"val ppl {result.perplexity:.2f}"

    def base_lines(self, result: Validation, dataset) -> list[str]:
        return [f"base model: validation loss {result.loss:.4f}, perplexity {result.perplexity:.2f} "
                f"({len(dataset)} {self.eval_units}, {dataset.num_tokens:,} {self.target_words})"]

    def spec(self, tokenizer) -> dict:
        """Saved as final/tunesmith_task.json: how `chat`, `predict`, `serve` and `eval` use the model."""
        return {"task": self.name}

    def summary(self, base_metrics: dict, best_metrics: dict, val_dataset) -> dict:
        return {"task": self.name}

    def sample_prompts(self, monitor: MonitorConfig, val_dataset, tokenizer) -> list[str]:
        return []

    def sample_stops(self, tokenizer) -> list[int]:
        return [tokenizer.eos_token_id]

    def throughput(self, model, dataset, tokenizer, device: torch.device, precision: str, batch_size: int, generate) -> dict:
        """How fast the model does this task's work on this machine: greedy continuations of validation prompts, in new
        tokens per second; {} when there is nothing to continue. `generate(prompts, new_tokens, stop_ids, batch)` decodes
        greedily and returns the tokens it made (the evaluation hands in the decoding engine)."""
        import time

        from ..runtime import autocast

        pairs = self.reference_pairs(dataset, tokenizer, SPEED_PROMPTS, SPEED_TOKENS)
        if not pairs:
            return {}
        prompts, stops = [prompt for prompt, _ in pairs], self.sample_stops(tokenizer)
        with autocast(device, precision):
            generate(prompts[:1], 4, stops, 1)  # warm-up

            def timed() -> float:
                started = time.perf_counter()
                return generate(prompts, SPEED_TOKENS, stops, batch_size) / (time.perf_counter() - started)

            return speed_record("generate", [timed() for _ in range(SPEED_REPEATS)], "new tokens", len(prompts), batch_size)

    def reference_pairs(self, val_dataset, tokenizer, count: int, new_tokens: int) -> list[tuple[list[int], str]]:
        """Up to `count` validation prompts (token ids) with the text the data follows them with, which generations
        are scored against (`eval --generate`); none for a task that does not generate text."""
        return []


SPEED_PROMPTS, SPEED_TOKENS = 16, 32  # what `throughput` times: validation prompts continued, new tokens each
HEAD_BEFORE_TRAINING = "the head before training: random unless the model came with one"  # a base line's caveat
SPEED_REPEATS = 3  # timings per model: the median is reported, with the spread, since a shared machine is noisy


def speed_record(use: str, rates: list[float], unit: str, count: int, batch: int) -> dict:
    """`throughput`'s result: the median of the timed rates, and their spread."""
    rates = sorted(rates)
    return {"use": use, "per_s": rates[len(rates) // 2], "timings": len(rates), "spread": [rates[0], rates[-1]], "unit": unit,
            "count": count, "batch": batch}


def check_both_sides(train, val, words: str, eval_only: bool) -> None:
    if val.written == 0 or (train.written == 0 and not eval_only):
        raise UserError(f"{train.written} training and {val.written} validation {words} after cleaning; "
                        "at least one of each is needed: add data or pass a validation file with --val-data")
