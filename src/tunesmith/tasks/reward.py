"""Reward modelling: a scalar head on the backbone learns which of two answers to a prompt people prefer (Bradley-Terry).

The pairs are read and rendered as `task: preference` reads and renders them (`PreferenceUnits`, `PreferenceExamples`):
the prompt and each answer through the chat template, chosen then rejected. The model is the backbone with a
one-output sequence-classification head (num_labels=1), which is what the ecosystem loads as a reward model
(`AutoModelForSequenceClassification`, as TRL's RewardTrainer writes one). A row's reward is the head at its last
real token; the loss of a pair is -log sigmoid(r_chosen - r_rejected) (Bradley and Terry, 1952; Ouyang et al., 2022).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..batch import Batch, pad_rows
from ..config import CleanConfig, DataConfig, RunConfig
from ..data.clean import transforms
from ..data.conversations import Message, merge_turns, with_system
from ..data.pairs import PreferenceExamples
from ..data.preferences import CHOSEN, REJECTED, judged_units
from ..data.report import DataReport
from ..data.units import Unit
from ..errors import UserError
from ..models import beyond_embeddings, first_tokens_text, load_model, load_tokenizer, resolve_model
from ..runtime import autocast, pick_device, pick_precision
from .base import HEAD_BEFORE_TRAINING, Task, TaskKind, check_both_sides
from .chat import chat_tokenizer, encode_answer, end_of_turn
from .loss import Validation
from .objectives import without_dropout
from .preference import PreferenceUnits
from .view import TaskView

REWARD_LABEL = "reward"  # the head's one output, as config.json's id2label names it
SHOWN = ("pairwise_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_reward_std", "rejected_reward_std")
UNPAIRED = ("task reward: the data holds thumbs up/down records (prompt, completion, label); a Bradley-Terry reward model "
            "learns from a comparison of two answers to one prompt: use task preference with preference.method kto, "
            "or pair the answers as prompt, chosen, rejected")


class LastTokenRewards(torch.nn.Module):
    """(B,) rewards: the head on the hidden state of each row's last real token.

    The position comes from the attention mask, not from a search for the pad token (transformers' way), which
    goes wrong where the pad token is also a real token of the row (a pad set to EOS). The head runs on B vectors
    rather than on every position. A module over the model, so that DistributedDataParallel wraps what runs forward.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.parts = (getattr(inner, inner.base_model_prefix), inner.score)  # a tuple: registered once, under `model`

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_) -> torch.Tensor:
        backbone, head = self.parts
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state  # (B, T, H)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (attention_mask * positions).argmax(-1)  # the rightmost real token, whichever side the padding is on
        return head(hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]).squeeze(-1).float()

    def of(self, batch: Batch) -> torch.Tensor:
        return self(batch.input_ids, batch.attention_mask)


def pair_losses(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: -log P(chosen preferred) = -log sigmoid(r_chosen - r_rejected), per pair."""
    return -F.logsigmoid(chosen - rejected)


class RewardLoss:
    """The training loss of a micro-batch of pairs (chosen row, then rejected row): the mean of its pairs' losses."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __call__(self, batch: Batch) -> torch.Tensor:
        rewards = self.module(batch.input_ids, batch.attention_mask)
        return pair_losses(rewards[batch.preference == CHOSEN], rewards[batch.preference == REJECTED]).mean()

    def weight(self, batch: Batch) -> float:
        return float((batch.preference == CHOSEN).sum())

    def compiled(self) -> RewardLoss:
        return RewardLoss(torch.compile(self.module))


@torch.no_grad()
def score_examples(module: LastTokenRewards, dataset: PreferenceExamples, batch_size: int, device: torch.device, precision: str,
                   limit: int | None = None) -> np.ndarray:
    """The reward of every stored answer row (NaN for the rows of pairs past `limit`)."""
    was_training = module.training
    module.eval()
    rewards = np.full(len(dataset.examples), np.nan)
    for indices in dataset.batches_by_length(batch_size, limit):
        batch = dataset.batch(indices).to(device)
        with autocast(device, precision):
            scored = module.of(batch)
        rewards[[row for _, row in dataset.rows(indices)]] = scored.cpu().numpy()
    module.train(was_training)
    return rewards


def reward_metrics(chosen: np.ndarray, rejected: np.ndarray) -> dict:
    """Pairwise accuracy (a tie counts as a miss), the mean margin, and the spread of each side's rewards."""
    def stat(values: np.ndarray, how) -> float:
        return float(how(values)) if len(values) else math.nan

    return {"pairs": len(chosen), "pairwise_accuracy": stat((chosen > rejected).astype(np.float64), np.mean),
            "reward_margin": stat(chosen - rejected, np.mean), "chosen_reward": stat(chosen, np.mean),
            "rejected_reward": stat(rejected, np.mean), "chosen_reward_std": stat(chosen, np.std),
            "rejected_reward_std": stat(rejected, np.std)}


def prompt_messages(prompt: str | list[dict], system_prompt: str | None) -> list[Message]:
    """A prompt as training read it: a string is one user turn, a list is chat messages (turns of one role merged),
    with the run's system prompt in front where it set one."""
    if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not all(isinstance(m, dict) for m in prompt)):
        raise UserError(f"a prompt to score is {type(prompt).__name__}: give a string, or a list of {{role, content}} messages")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
        [{"role": m.get("role", ""), "content": m.get("content", "")} for m in prompt]
    messages = merge_turns(((m["role"], m["content"]) for m in with_system(messages, system_prompt)), {}, "prompt")
    if not messages or messages[-1]["role"] == "assistant":
        raise UserError("a prompt to score ends with the assistant's turn (or is empty); its last message is the user's, "
                        "and the answer is passed apart from it")
    return messages


def pair_ids(tokenizer, prompt: str | list[dict], answer: str, system_prompt: str | None, block_size: int) -> list[int]:
    """A prompt and one answer as the token row training scored: the chat template's rendering, cut at the block size."""
    if isinstance(prompt, str):  # a prompt or an answer of megabytes costs what its first block of tokens does
        prompt = first_tokens_text(tokenizer, prompt, block_size)
    ids, _ = encode_answer(tokenizer, prompt_messages(prompt, system_prompt), first_tokens_text(tokenizer, str(answer), block_size))
    return ids[:block_size].tolist()


@torch.inference_mode()
def score_rows(module: LastTokenRewards, rows: list[list[int]], pad_id: int, batch_size: int, device: torch.device,
               precision: str) -> np.ndarray:
    """(N,) float32 rewards of token rows, the rows batched by length so that little of a batch is padding."""
    rewards = np.zeros(len(rows), dtype=np.float32)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, attention = pad_rows([rows[i] for i in chunk], pad_id)
        with autocast(device, precision):
            rewards[chunk] = module(ids.to(device), attention.to(device)).cpu().numpy()
    return rewards


class RewardUnits(PreferenceUnits):
    """Pairs for `prepare`, as preference tuning reads and renders them; a thumbs up or down has no partner to compare
    with, so data holding one is refused rather than silently thinned."""

    name = "reward"
    unit_words = "judged prompts (pairs)"
    fields_hint = ("each record needs prompt, chosen and rejected fields (or chosen and rejected transcripts); "
                   "map other names with chat.fields")

    def cache_settings(self) -> dict:
        return {"task": self.name, "chat": self.cfg.chat.model_dump(mode="json")}

    def units(self, reader, files: list[Path], data: DataConfig, clean: CleanConfig, report: DataReport) -> Iterator[Unit]:
        for unit in judged_units(reader(report), files, self.cfg.chat, report, transforms(clean), False, self.name):
            if not unit.value.paired:
                raise UserError(UNPAIRED)
            yield unit

    def finish(self, train, val, data: DataConfig, report: DataReport, eval_only: bool) -> dict:
        check_both_sides(train, val, "answers", eval_only)
        pairs = {name: int((np.asarray(writer.classes) == CHOSEN).sum()) for name, writer in (("train", train), ("val", val))}
        if pairs["val"] == 0:
            raise UserError("the validation split holds no pairs; a reward model is measured on chosen and rejected answers")
        meta = {"task": self.name, "targets": {"train": train.targets, "val": val.targets}, "pairs": pairs,
                "examples_are": " (answers)", "loss_falls_on": "each answer's reward, read at its last token"}
        self.control.finish(meta, report, "judged prompts")
        if self.truncated:
            meta["truncated"] = self.truncated
            report.warnings.append(f"{self.truncated} answers were cut at data.block_size={data.block_size}; raise it to keep them whole")
        return meta


class RewardTask(Task):
    """Pairs of answers; the head's reward of the chosen answer is pushed above the rejected one's, scored by the
    share of held-out pairs it ranks right."""

    eval_units = "pairs"
    target_words = "tokens"

    def dataset(self, prepared, split: str, training: bool = False) -> PreferenceExamples:
        return PreferenceExamples(prepared.split(split), paired=True)

    def training_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """Dropout off unless model.dropout sets it, as TRL's reward trainer does: the two rewards of a pair are
        compared, and dropout's noise in each would blur the margin the loss reads."""
        if self.cfg.model.dropout is None:
            without_dropout(model)
        return LastTokenRewards(model)

    def training_loss(self, module: torch.nn.Module) -> RewardLoss:
        return RewardLoss(module)

    def validation(self, model, dataset: PreferenceExamples, tokenizer, batch_size: int, device: torch.device, precision: str,
                   max_blocks: int | None = None, log=print) -> Validation:
        rewards = score_examples(LastTokenRewards(model), dataset, batch_size, device, precision, max_blocks)
        measured = dataset.items[: min(len(dataset), max_blocks or len(dataset))]
        chosen, rejected = (rewards[[pair[side] for pair in measured]] for side in (0, 1))
        loss = float(pair_losses(torch.from_numpy(chosen), torch.from_numpy(rejected)).mean()) if measured else math.nan
        tokens = sum(dataset.length(k) for k in range(len(measured)))
        return Validation(loss=loss, tokens=tokens, metrics=reward_metrics(chosen, rejected))

    def score(self, result: Validation) -> float:
        """Minus the pairwise accuracy, what a reward model is for; among steps with the same accuracy, the lower
        Bradley-Terry loss wins. The loss enters as loss / (1 + loss) / (2 * pairs), below half of one pair's share
        of the accuracy, so it breaks ties without ever outweighing a pair ranked right."""
        pairs = max(result.metrics["pairs"], 1)
        return -result.metrics["pairwise_accuracy"] + result.loss / (1 + result.loss) / (2 * pairs)

    def eval_row(self, result: Validation) -> dict:
        return {"val_loss": result.loss, **{key: result.metrics[key] for key in SHOWN}}

    def progress_text(self, result: Validation) -> str:
        m = result.metrics
        return f"val loss {result.loss:.4f}  pair acc {m['pairwise_accuracy']:.1%}  margin {m['reward_margin']:.3f}"

    def base_lines(self, result: Validation, dataset) -> list[str]:
        m = result.metrics
        return [f"base model ({HEAD_BEFORE_TRAINING}): pairwise accuracy "
                f"{m['pairwise_accuracy']:.1%} over {m['pairs']} validation pairs; reward chosen {m['chosen_reward']:.3f}, "
                f"rejected {m['rejected_reward']:.3f}; Bradley-Terry loss {result.loss:.4f}"]

    def spec(self, tokenizer) -> dict:
        """What scores text as training did: the template's end of turn, the system prompt put in front of each
        prompt, the block size rows are cut at, and the fields a pair was read from."""
        chat = self.cfg.chat
        return {"task": self.name, "label": REWARD_LABEL, "end_of_turn": end_of_turn(tokenizer), "block_size": self.cfg.data.block_size,
                "system_prompt": chat.system_prompt, "fields": dict(chat.fields), "score_at": "last token"}

    def summary(self, base_metrics: dict, best_metrics: dict, val_dataset) -> dict:
        best = best_metrics or base_metrics
        out = {"task": self.name, "pairs": best["pairs"]}
        for key in SHOWN:
            out[key], out[f"base_{key}"] = best[key], base_metrics.get(key)
        return out


class RewardKind(TaskKind):
    """Reward modelling as the config decides it: preference pairs, a one-output head, no generation."""

    builds = RewardTask
    name = "reward"
    learns = "chosen and rejected answers, to train a reward model that scores answers (Bradley-Terry)"
    packings = ("padded",)
    also_reads = ("chat",)
    rows_per_example = 2  # chosen and rejected
    needs_saved_spec = True

    def for_saved(self, spec: dict, cfg: RunConfig) -> RunConfig:
        """The system prompt and field names the reward model was trained with, so new pairs render as training's did."""
        chat = {"system_prompt": spec.get("system_prompt"), "fields": spec.get("fields") or cfg.chat.fields}
        return cfg.model_copy(update={"chat": cfg.chat.model_copy(update=chat)})

    def preparer(self, cfg: RunConfig, saved: dict | None = None) -> RewardUnits:
        return RewardUnits(cfg)

    def tokenizer(self, resolved, log=print):
        return chat_tokenizer(resolved, log)

    def has_head(self, cfg: RunConfig) -> bool:
        return True

    def probe_skip_reason(self, cfg: RunConfig, model_config) -> str | None:
        return "a reward model writes no text; what it keeps is measured by its pairwise accuracy on the held-out pairs"

    def head_classes(self, cfg: RunConfig, label_count: int) -> int:
        return 1

    def head_labels(self, cfg: RunConfig, meta: dict) -> list[str] | None:
        return [REWARD_LABEL]


class RewardView(TaskView):
    """How a reward model run's results read."""

    name = "reward"
    headline = ("pairwise_accuracy", "pairwise accuracy", True)
    try_it = "score"
    writes_text = False
    loss_scope = "Bradley-Terry "
    description = "A reward model (Bradley-Terry: one score per prompt and answer)"

    def result_lines(self, summary: dict) -> list[str]:
        return [f"pairwise accuracy {summary['base_pairwise_accuracy']:.1%} (base) -> {summary['pairwise_accuracy']:.1%} "
                f"(best, step {summary['best_step']}) over {summary['pairs']} validation pairs; stopped: {summary['stopped_because']}",
                f"reward of the chosen answers {summary['chosen_reward']:.3f} (std {summary['chosen_reward_std']:.3f}), "
                f"of the rejected {summary['rejected_reward']:.3f} (std {summary['rejected_reward_std']:.3f}); "
                f"margin {summary['base_reward_margin']:.3f} -> {summary['reward_margin']:.3f}"]

    def eval_lines(self, result) -> list[str]:
        m = result.metrics
        return [f"{result.model}: pairwise accuracy {m['pairwise_accuracy']:.1%} over {m['pairs']} pairs; margin {m['reward_margin']:.3f}; "
                f"reward chosen {m['chosen_reward']:.3f} (std {m['chosen_reward_std']:.3f}), rejected {m['rejected_reward']:.3f} "
                f"(std {m['rejected_reward_std']:.3f}); {self.loss_scope}loss {result.loss:.4f}"]

    def eval_change(self, first, second) -> str:
        change = second.metrics["pairwise_accuracy"] - first.metrics["pairwise_accuracy"]
        return f"pairwise accuracy change from {first.model} to {second.model}: {100 * change:+.1f} points"

    def comparison_rows(self, summary: dict) -> list[tuple[str, float, float]]:
        return [(name, summary.get(f"base_{key}"), summary.get(key)) for name, key in (
            ("pairwise accuracy", "pairwise_accuracy"), ("mean reward margin", "reward_margin"),
            ("chosen answers' reward", "chosen_reward"), ("rejected answers' reward", "rejected_reward"))]

    def saved_with_head(self, spec: dict) -> bool:
        return True


class RewardModel:
    """A trained reward model ready to score answers, for `predict` and as a reward for other training (GRPO): a run
    folder, its final/, or a model directory saved with task reward, on one device.

    Each (prompt, answer) becomes the token row training scored (`pair_ids`: the chat template, the run's system
    prompt, the block size) and its reward is the head at that row's last token. It lives in `tasks`, not in
    `inference`, so that a task's rewards can use it without an import cycle.
    """

    def __init__(self, spec: str, device_name: str = "auto", log=print, precision: str = "auto"):
        """`precision` auto: bf16 where the device computes it natively, as training's evaluation did; fp32 scores
        exactly as the exported model does in plain transformers."""
        from . import read_task

        resolved = resolve_model(spec, log=log)
        self.spec = read_task(Path(resolved.path))
        if self.spec["task"] != RewardKind.name:
            raise UserError(f"{spec} is not a reward model (trained with task {self.spec['task']}); train one with --task reward")
        self.device = pick_device(device_name)
        self.precision = pick_precision(precision, self.device)
        self.tokenizer = load_tokenizer(resolved)
        self.module = LastTokenRewards(load_model(resolved, classifier=True).to(self.device).eval())
        self.block_size = self.spec["block_size"]
        self.system_prompt = self.spec.get("system_prompt")
        self.fields: dict[str, str] = self.spec.get("fields") or {}

    def rewards(self, prompts: list[str | list[dict]], completions: list[str], batch_size: int = 16) -> np.ndarray:
        """(N,) float32 rewards of each prompt (a string: one user message; a list: chat messages) with its completion."""
        if len(prompts) != len(completions):
            raise UserError(f"{len(prompts)} prompts and {len(completions)} completions: pass one completion per prompt")
        return self.score([self.pair_row(prompt, answer) for prompt, answer in zip(prompts, completions)], batch_size)

    def pair_row(self, prompt: str | list[dict], answer: str) -> list[int]:
        """A prompt and its answer as the token row training scored."""
        return self._readable(pair_ids(self.tokenizer, prompt, answer, self.system_prompt, self.block_size))

    def text_row(self, text: str) -> list[int]:
        """A text scored as it is (already rendered), cut at the block size as training's rows were."""
        row = self.tokenizer(first_tokens_text(self.tokenizer, str(text), self.block_size), add_special_tokens=False)["input_ids"][: self.block_size]
        if not row:
            raise UserError("a text to score is empty once tokenized")
        return self._readable(row)

    def _readable(self, row: list[int]) -> list[int]:
        unknown = beyond_embeddings(self.module.model, row, "the text to score")
        if unknown:
            raise UserError(unknown)
        return row

    def score(self, rows: list[list[int]], batch_size: int = 16) -> np.ndarray:
        """(N,) float32 rewards of token rows, batched by length, under inference mode."""
        return score_rows(self.module, rows, self.tokenizer.pad_token_id, batch_size, self.device, self.precision)
