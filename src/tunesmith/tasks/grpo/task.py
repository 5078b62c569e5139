"""GRPO as a task: its config-level kind, the run-time task the loop calls, and how its results read."""

from __future__ import annotations

import math
import os
from copy import deepcopy
from pathlib import Path
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ...config import RunConfig
from ...errors import ConfigError
from ..base import Task, TaskKind
from ..chat import end_of_turn, stop_token_ids
from ..loss import Validation
from ..objectives import without_dropout
from ..view import TaskView
from .objective import KLPenalty, grpo_loss
from .prompts import PromptUnits, Prompts, read_prompts
from .rewards import Rewards, check_rewards, prompt_text
from .rollout import EVAL_ROUND, GroupBatch, Rollouts, completion_logps, distinct_2, group_seeds, reference_logps, sample_groups

SAMPLES_SHOWN = 3
EVAL_PROMPTS_PER_BATCH = 16


@dataclass(frozen=True)
class GrpoReference:
    """What a GRPO run holds before its weights change: its rewards, and the reference policy of its KL penalty."""

    rewards: Rewards
    reference: object = None  # a function of a GroupBatch, or None with beta 0


class GrpoLoss:
    """The GRPO loss of a micro-batch of groups on the training module; reports KL and the clipped share to the batch's stats."""

    def __init__(self, module: torch.nn.Module, cfg, penalty: KLPenalty | None = None, rows: int | None = None):
        """`cfg` the run's GrpoConfig; `penalty` the KL penalty's weight, shared with the rollouts that adapt it; `rows`
        as `completion_logps`'."""
        self.module, self.cfg, self.rows = module, cfg, rows
        self.penalty = penalty or KLPenalty(cfg.beta)

    def weight(self, batch: GroupBatch) -> float:
        """Each micro-batch weighs by its completions: the step's loss is the one of all its completions together."""
        return float(batch.size)

    def compiled(self) -> "GrpoLoss":
        return self

    def __call__(self, batch: GroupBatch) -> torch.Tensor:
        cfg = self.cfg
        logps = completion_logps(self.module, batch, cfg.temperature, self.rows)
        loss, terms = grpo_loss(logps, batch.old_logps, batch.ref_logps, batch.advantages, batch.completion_mask, cfg.loss, cfg.epsilon,
                                self.penalty.value, cfg.max_new_tokens)
        mask = batch.completion_mask.bool()
        with torch.no_grad():
            kl = float(terms.kl[mask].sum()) if terms.kl is not None else 0.0
            batch.stats.add(kl, float(terms.clipped[mask].sum()), float(mask.sum()), batch.size)
        return loss


class GrpoTask(Task):
    """Prompts whose completions are sampled, rewarded and reinforced; validation samples held-out prompts and
    measures their mean reward."""

    eval_units = "prompts"
    target_words = "prompt tokens"

    def __init__(self, kind: TaskKind, cfg: RunConfig, meta: dict, reference: GrpoReference | None = None):
        super().__init__(kind, cfg, meta)
        self._reference = reference
        self.steps_per_batch = cfg.grpo.iterations

    @cached_property
    def penalty(self) -> KLPenalty:
        """The KL penalty's weight, one object the loss reads and the rollouts move (with grpo.target_kl)."""
        return KLPenalty(self.cfg.grpo.beta, self.cfg.grpo.target_kl, self.cfg.grpo.kl_horizon)

    @cached_property
    def rewards(self) -> Rewards:
        """The run's rewards (built before training), or, for a saved model evaluated on its own, built from the config."""
        return self._reference.rewards if self._reference is not None else Rewards(self.cfg.grpo, self.cfg.train.device)

    # datasets and the loss
    def dataset(self, prepared, split: str, training: bool = False) -> Prompts:
        return read_prompts(prepared, split)

    def example_lengths(self, dataset) -> None:
        return None

    def training_module(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.cfg.model.dropout is None:
            without_dropout(model)  # dropout would make the probability ratio of identical weights differ from 1
        return model

    def training_loss(self, module: torch.nn.Module) -> GrpoLoss:
        return GrpoLoss(module, self.cfg.grpo, self.penalty, scoring_rows(self.cfg))

    def rollouts(self, prompts: Prompts, model, tokenizer, device: torch.device, precision: str) -> Rollouts:
        reference = self._reference.reference if self._reference is not None else None
        return Rollouts(self.cfg.grpo, self.cfg.train.seed, prompts, model, tokenizer, self.rewards, reference,
                        self.sample_stops(tokenizer), device, precision, self.penalty, scoring_rows(self.cfg))

    # evaluation
    def validation(self, model, dataset: Prompts, tokenizer, batch_size: int, device: torch.device, precision: str,
                   max_blocks: int | None = None, log=print) -> Validation:
        """Held-out prompts' completions, the same seeded draws each time, and their rewards."""
        cfg = self.cfg.grpo.model_copy(update={"group_size": self.cfg.grpo.eval_completions})
        indices = list(range(min(len(dataset), max_blocks or len(dataset))))
        texts, lengths, forms = [], [], []
        for start in range(0, len(indices), EVAL_PROMPTS_PER_BATCH):
            chunk = indices[start : start + EVAL_PROMPTS_PER_BATCH]
            groups = sample_groups(model, tokenizer, [dataset.ids(i) for i in chunk], group_seeds(self.cfg.train.seed, EVAL_ROUND, chunk),
                                   cfg, self.sample_stops(tokenizer), device, precision)
            for index, group in zip(chunk, groups):
                texts += [s.text for s in group]
                lengths += [len(s.ids) for s in group]
                forms += [dataset.form(index)] * len(group)
        total, each = self.rewards.score(forms, texts, lengths)
        metrics = {"reward": float(total.mean()), **{f"reward/{name}": float(v.mean()) for name, v in each.items()},
                   "distinct_2": distinct_2(texts), "completion_length": float(np.mean(lengths)), "prompts": len(indices),
                   "samples": [{"prompt": prompt_text(forms[r]), "text": texts[r], "reward": float(total[r]),
                                **{f"reward/{name}": float(v[r]) for name, v in each.items()}}
                               for r in range(0, min(len(texts), SAMPLES_SHOWN * cfg.group_size), cfg.group_size)]}
        return Validation(loss=math.nan, tokens=int(sum(lengths)), metrics=metrics)

    def score(self, result: Validation) -> float:
        return -result.metrics["reward"]

    def eval_row(self, result: Validation) -> dict:
        m = result.metrics
        return {f"val_{key}": value for key, value in m.items() if key.startswith("reward") or key in ("distinct_2", "completion_length")}

    def progress_text(self, result: Validation) -> str:
        return f"val reward {result.metrics['reward']:.3f}"

    def base_lines(self, result: Validation, dataset) -> list[str]:
        m = result.metrics
        each = ", ".join(f"{key.removeprefix('reward/')} {value:.3f}" for key, value in m.items() if key.startswith("reward/"))
        return [f"base model: mean reward {m['reward']:.3f} ({each}) over {m['prompts']} held-out prompts, "
                f"{self.cfg.grpo.eval_completions} completions each; distinct-2 {m['distinct_2']:.3f}, "
                f"{m['completion_length']:.1f} tokens per completion"]

    def made_samples(self, result: Validation) -> list[dict]:
        return result.metrics.get("samples", [])

    # what is saved and reported
    def spec(self, tokenizer) -> dict:
        chat = bool(getattr(tokenizer, "chat_template", None))
        return {"task": self.name, "grpo": absolute_rewards(self.cfg.grpo.model_dump(mode="json")),
                **({"end_of_turn": end_of_turn(tokenizer)} if chat else {})}

    def summary(self, base_metrics: dict, best_metrics: dict, val_dataset) -> dict:
        best = best_metrics or base_metrics
        out = {"task": self.name, "grpo_loss": self.cfg.grpo.loss, "group_size": self.cfg.grpo.group_size, "beta": self.cfg.grpo.beta,
               **({"target_kl": self.cfg.grpo.target_kl, "final_beta": self.penalty.value} if self.penalty.adapts else {}),
               "prompts": best.get("prompts")}
        for key in [k for k in best if k.startswith("reward")] + ["distinct_2", "completion_length"]:
            out[key], out[f"base_{key}"] = best.get(key), base_metrics.get(key)
        return out

    def sample_stops(self, tokenizer) -> list[int]:
        return stop_token_ids(tokenizer)


class GrpoKind(TaskKind):
    """GRPO as the config decides it: prompts to prepare, rewards to check and load, the reference to hold."""

    builds = GrpoTask
    name = "grpo"
    learns = "prompts and rewards: sampled completions reinforced by what the rewards give them (GRPO)"
    section = "grpo"
    also_reads = ("chat",)
    packings = ("padded",)
    rows_per_example = 8  # a prompt's group of completions, at the default group size

    def example_rows(self, cfg: RunConfig) -> int:
        return cfg.grpo.group_size

    def frozen_copies(self, cfg: RunConfig) -> int:
        return int(bool(cfg.grpo.beta) and cfg.model.method not in ("lora", "qlora"))

    def fewer_rows(self, rows: int) -> str | None:
        return f"grpo.group_size={rows}" if rows >= 2 else None

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        if cfg.grpo.max_new_tokens >= cfg.data.block_size:
            raise ConfigError([f"grpo.max_new_tokens: {cfg.grpo.max_new_tokens} leaves no room for a prompt in data.block_size "
                               f"{cfg.data.block_size}; raise data.block_size or lower grpo.max_new_tokens"])
        if cfg.train.distributed == "fsdp":
            raise ConfigError(["train.distributed: fsdp shards the model, and GRPO samples its completions from the whole model "
                               "on each process; use ddp"])
        if cfg.train.compile is True:
            raise ConfigError(["train.compile: true does not apply to task grpo (each step's completions have new lengths, so "
                               "a compiled step recompiles rather than repays); use auto or false"])
        check_rewards(cfg.grpo)

    def settle(self, cfg: RunConfig, model_keeps_apart: bool, log=print) -> RunConfig:
        """No loss watchdog (GRPO's loss has no scale that says it diverges: kl and the drift watch instead), no compiling
        on auto (every step's completions have new lengths, so a compiled step would recompile rather than repay), and a
        fixed micro-batch of prompts, since what fits depends on completions not sampled yet."""
        cfg = super().settle(cfg, model_keeps_apart, log)
        train = {"loss_watchdog": None, "compile": cfg.train.compile if cfg.train.compile != "auto" else False}
        if cfg.train.micro_batch_size == "auto":
            train["micro_batch_size"] = 4
            log(f"train.micro_batch_size auto: 4 prompts ({4 * cfg.grpo.group_size} completions) per micro-batch for GRPO")
        return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})

    def for_saved(self, spec: dict, cfg: RunConfig) -> RunConfig:
        """The run's own GRPO settings and rewards, unless the config gives rewards; a Python reward is never taken from a
        saved model's files (they may come from anywhere), only from the config."""
        if "grpo" not in spec:
            return cfg
        saved = dict(spec["grpo"])
        saved["rewards"] = [reward.model_dump(mode="json") for reward in cfg.grpo.rewards] or \
            [reward for reward in saved.get("rewards", []) if not reward.get("python")]
        if not saved["rewards"]:
            raise ConfigError(["grpo.rewards: this model's rewards are Python functions, which are taken from your config only; "
                               "give them with --set 'grpo.rewards=[{python: rewards.py:score}]'"])
        return cfg.model_copy(update={"grpo": type(cfg.grpo).model_validate(saved)})

    def preparer(self, cfg: RunConfig, saved: dict | None = None) -> PromptUnits:
        return PromptUnits(cfg, cfg.data.block_size - cfg.grpo.max_new_tokens)

    def reference(self, cfg: RunConfig, meta: dict, model: torch.nn.Module, prepared, resolved, device: torch.device,
                  precision: str, batch_size: int, log=print) -> GrpoReference:
        rewards = Rewards(cfg.grpo, str(device))
        if not cfg.grpo.beta:
            return GrpoReference(rewards)
        if hasattr(model, "disable_adapter"):
            return GrpoReference(rewards, reference_logps(model, cfg.grpo.temperature, rows=scoring_rows(cfg)))
        log("grpo.beta > 0 without LoRA: holding a frozen copy of the model as the KL reference")
        frozen = without_dropout(deepcopy(model)).eval().requires_grad_(False)
        return GrpoReference(rewards, reference_logps(model, cfg.grpo.temperature, frozen, scoring_rows(cfg)))


def scoring_rows(cfg: RunConfig) -> int | None:
    """The row length that picks the attention kernel of a run's log-prob passes (`runtime.attention_kernels`): its
    longest row (prompt and completion), so that the reference, the sampling policy and the trained policy are scored by
    one kernel whatever each batch's width; None with gradient checkpointing, whose recomputation during the backward
    pass would run outside the forward's choice and save other tensors."""
    return None if cfg.model.gradient_checkpointing else cfg.data.block_size


def absolute_rewards(grpo: dict) -> dict:
    """GRPO settings with each reward's run and file as absolute paths, so a saved model is scored the same from anywhere."""
    for reward in grpo["rewards"]:
        if reward.get("run"):
            reward["run"] = str(Path(os.path.expanduser(reward["run"])).resolve())
        if reward.get("python"):
            file, _, function = reward["python"].rpartition(":")
            reward["python"] = f"{Path(os.path.expanduser(file)).resolve()}:{function}"
    return grpo


class GrpoView(TaskView):
    """How a GRPO run's results read."""

    name = "grpo"
    headline = ("val_reward", "mean reward", True)
    summary_headline = "reward"
    rewarded = True
    description = "A language model tuned by rewards (GRPO)"

    def result_lines(self, summary: dict) -> list[str]:
        lines = [f"mean reward on held-out prompts {summary['base_reward']:.3f} (base) -> {summary['reward']:.3f} "
                 f"(best, step {summary['best_step']}); stopped: {summary['stopped_because']}"]
        each = [f"{key.removeprefix('reward/')} {summary[f'base_{key}']:.3f} -> {summary[key]:.3f}"
                for key in summary if key.startswith("reward/")]
        if each:
            lines.append("each reward: " + ", ".join(each))
        lines.append(f"distinct-2 {summary['base_distinct_2']:.3f} -> {summary['distinct_2']:.3f}; tokens per completion "
                     f"{summary['base_completion_length']:.1f} -> {summary['completion_length']:.1f}")
        return lines

    def eval_lines(self, result) -> list[str]:
        m = result.metrics
        each = ", ".join(f"{key.removeprefix('reward/')} {value:.3f}" for key, value in m.items() if key.startswith("reward/"))
        return [f"{result.model}: mean reward {m['reward']:.3f} ({each}) over {m['prompts']} prompts; distinct-2 {m['distinct_2']:.3f}, "
                f"{m['completion_length']:.1f} tokens per completion"]

    def eval_change(self, first, second) -> str:
        change = second.metrics["reward"] - first.metrics["reward"]
        return f"mean reward change from {first.model} to {second.model}: {change:+.3f}"

    def comparison_rows(self, summary: dict) -> list[tuple[str, float, float]]:
        rows = [("mean reward", summary.get("base_reward"), summary.get("reward"))]
        rows += [(f"reward {key.removeprefix('reward/')}", summary.get(f"base_{key}"), summary.get(key))
                 for key in summary if key.startswith("reward/")]
        return rows + [("distinct-2", summary.get("base_distinct_2"), summary.get("distinct_2"))]


__all__ = ["GrpoKind", "GrpoTask", "GrpoView"]
