"""GRPO's completions: sampled in groups through the decoding engine, scored by the rewards, turned into advantages,
and laid out as the batches the loss reads.

Every completion draws from its own generator, seeded by (train.seed, the round, the prompt's index) and its place
in the group, so a seeded run samples the same completions whatever the batch or the process a prompt lands in, and
a resumed run samples what the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.distributed as dist

from ...config import GrpoConfig
from ...decoding import Decoder, Job, SamplingSettings, decode_all
from ...decoding.engine import derived_seed
from ...errors import UserError
from ...methods.adapters import adapters_for_decoding
from ...runtime import attention_kernels, autocast, low_precision_dtype
from .logprobs import token_logprobs
from .objective import KLPenalty, group_advantages
from .prompts import Prompts
from .rewards import Rewards

EVAL_ROUND = 2**40  # the seed key of the held-out completions: the same draws at every evaluation
SCORED_PROMPTS = 8  # prompts' groups per log-prob pass before training (64 completions at the default group size)


@dataclass
class Sampled:
    """One completion: its tokens as trained on (with the stop token that ended it) and its text."""

    ids: list[int]
    text: str


def sample_groups(model, tokenizer, prompts: list[list[int]], seeds: list[int], cfg: GrpoConfig, stops: list[int],
                  device: torch.device, precision: str) -> list[list[Sampled]]:
    """`cfg.group_size` completions of each prompt, all decoded in one batch, under the training precision (on a CPU,
    LoRA adapters apply in fp32 meanwhile: `methods.adapters.adapters_for_decoding`)."""
    settings = SamplingSettings(cfg.temperature, cfg.top_p, cfg.top_k)
    found: list[list[Sampled | None]] = [[None] * cfg.group_size for _ in prompts]
    errors: list[str] = []

    def collector(row: int):
        def send(event) -> None:
            if event[0] == "end":
                ids = list(event[4]) + ([event[5]] if event[5] is not None else [])
                found[row][event[1]] = Sampled(ids, tokenizer.decode(event[4], skip_special_tokens=True))
            elif event[0] == "error":
                errors.append(event[2])
        return send

    jobs = [Job(list(prompt), settings, cfg.max_new_tokens, collector(row), n=cfg.group_size, seed=seed)
            for row, (prompt, seed) in enumerate(zip(prompts, seeds))]
    was_training = model.training
    model.eval()
    try:
        with autocast(device, precision), adapters_for_decoding(model, device, low_precision_dtype(precision)):
            decode_all(Decoder(model, tokenizer, stops), jobs, max_batch=len(jobs) * cfg.group_size)
    finally:
        model.train(was_training)
    if errors:
        advice = "; lower train.micro_batch_size, grpo.group_size or grpo.max_new_tokens" if "out of memory" in errors[0] else ""
        raise UserError(f"sampling completions failed: {errors[0].split(';')[0]}{advice}")
    return [[s if s is not None else Sampled([], "") for s in group] for group in found]


def group_seeds(seed: int, round_: int, indices: list[int]) -> list[int]:
    return [derived_seed(seed, round_, index) % 2**63 for index in indices]


def distinct_2(texts: list[str]) -> float:
    """The share of distinct word bigrams among all bigrams of the texts: falls as completions collapse into one."""
    bigrams = [tuple(words[i : i + 2]) for text in texts for words in [text.split()] for i in range(len(words) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


@dataclass
class StepStats:
    """What the loss reports of the current step's micro-batches (sums, so shares are exact across micro-batches, and
    across processes once `summed`)."""

    kl: float = 0.0
    clipped: float = 0.0
    tokens: float = 0.0
    completions: float = 0.0

    def add(self, kl: float, clipped: float, tokens: float, completions: float) -> None:
        self.kl, self.clipped = self.kl + kl, self.clipped + clipped
        self.tokens, self.completions = self.tokens + tokens, self.completions + completions

    def summed(self, device: torch.device) -> StepStats:
        """The sums over every process of a distributed run (this process's alone otherwise)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self
        values = torch.tensor([self.kl, self.clipped, self.tokens, self.completions], dtype=torch.float64, device=device)
        dist.all_reduce(values)
        return StepStats(*values.tolist())

    @property
    def mean_kl(self) -> float:
        return self.kl / max(self.tokens, 1.0)

    def row(self, beta: float) -> dict:
        return {"clipped_share": self.clipped / max(self.tokens, 1.0), **({"kl": self.mean_kl} if beta else {})}


@dataclass
class GroupBatch:
    """Completions as the loss reads them: prompts left-padded, completions after them right-padded, so every completion
    starts at the same column and the logits of the last `completion_width + 1` positions score them all."""

    input_ids: torch.Tensor  # (B, prompt width + completion width)
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_mask: torch.Tensor  # (B, completion width) 1 on a completion's tokens
    advantages: torch.Tensor  # (B,)
    old_logps: torch.Tensor | None = None  # (B, completion width): the sampling policy's, with more than one iteration
    ref_logps: torch.Tensor | None = None  # the reference's, with beta > 0
    stats: StepStats = field(default_factory=StepStats)

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def completion_width(self) -> int:
        return self.completion_mask.shape[1]

    def to(self, device: torch.device) -> GroupBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return replace(self, **{name: move(getattr(self, name)) for name in
                                ("input_ids", "attention_mask", "position_ids", "completion_mask", "advantages", "old_logps", "ref_logps")})


def group_batch(rows: list[tuple[list[int], list[int]]], advantages: torch.Tensor, pad_id: int, stats: StepStats) -> GroupBatch:
    """(prompt ids, completion ids) rows as a GroupBatch."""
    prompt_width = max(len(p) for p, _ in rows)
    width = max(1, max(len(c) for _, c in rows))
    ids = torch.full((len(rows), prompt_width + width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    completion = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (prompt, tokens) in enumerate(rows):
        ids[r, prompt_width - len(prompt) : prompt_width] = torch.tensor(prompt)
        attention[r, prompt_width - len(prompt) : prompt_width + len(tokens)] = 1
        if tokens:
            ids[r, prompt_width : prompt_width + len(tokens)] = torch.tensor(tokens)
            completion[r, : len(tokens)] = 1
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    return GroupBatch(ids, attention, positions, completion, advantages, stats=stats)


def completion_logps(module, batch: GroupBatch, temperature: float = 1.0, rows: int | None = None) -> torch.Tensor:
    """(B, completion width) fp32 log-probabilities of the completions' tokens under `module` at the sampling temperature
    (the distribution they were drawn from, as TRL scores them). `rows`: the run's longest row, which picks the attention
    kernel (`runtime.attention_kernels`) for every pass alike; None keeps the default kernel."""
    width = batch.completion_width
    with attention_kernels(batch.input_ids.device, rows) if rows else contextlib.nullcontext():
        logits = module(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                        use_cache=False, logits_to_keep=width + 1).logits
    return token_logprobs(logits, batch.input_ids[:, -width:], temperature)  # position i scores token i + 1


@dataclass
class Round:
    """One batch of completions: the prompts it answers (a step's on this process), their groups, and the numbers
    the loss and the logs need."""

    number: int
    indices: list[int]  # prompt indices, in order; group g holds completions g*G .. (g+1)*G-1
    completions: list[list[int]]
    advantages: list[float]
    old_logps: list[list[float]] | None = None
    ref_logps: list[list[float]] | None = None
    metrics: dict = field(default_factory=dict)


class Rollouts:
    """The completions a GRPO run learns from, made as it trains: the training loop's dataset of the current round.

    `begin_step` samples a new round every grpo.iterations steps (and after a resume, from the round the checkpoint
    kept); `batch` lays out a micro-batch of prompts' groups for the loss; `end_step` says what the loss saw.
    """

    def __init__(self, cfg: GrpoConfig, seed: int, prompts: Prompts, model, tokenizer, rewards: Rewards, reference,
                 stops: list[int], device: torch.device, precision: str, penalty: KLPenalty | None = None, rows: int | None = None):
        """`reference`: a function of a GroupBatch giving the reference's log-probs, or None (beta 0); `penalty`: the KL
        penalty's weight the loss reads, which `end_step` moves with grpo.target_kl; `rows`: as `completion_logps`'."""
        self.cfg, self.seed, self.prompts, self.model, self.tokenizer = cfg, seed, prompts, model, tokenizer
        self.penalty = penalty or KLPenalty(cfg.beta)
        self.rewards, self.reference, self.stops, self.device, self.precision = rewards, reference, stops, device, precision
        self.rows = rows
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.current: Round | None = None
        self.stats = StepStats()
        self.training: tuple[list[int], float] = ([], time.perf_counter())  # the step's prompts, and when its training began
        self.block_size = prompts.examples.block_size + cfg.max_new_tokens  # the longest row a step trains on

    # the dataset interface the step runner reads
    def __len__(self) -> int:
        return len(self.prompts)

    def length(self, index: int) -> int:
        """The tokens a prompt's group trains on: its prompt and its completions, once sampled."""
        if self.current is not None and index in self.current.indices:
            group = self._group(index)
            return sum(self.prompts.length(index) + len(self.current.completions[g]) for g in group)
        return self.prompts.length(index)

    @property
    def num_tokens(self) -> int:
        return self.prompts.num_tokens

    def batch(self, indices: list[int]) -> GroupBatch:
        """The groups of the prompts `indices` (this step's, sampled by `begin_step`)."""
        current = self.current
        rows = [g for index in indices for g in self._group(index)]
        batch = group_batch([(self.prompts.ids(current.indices[g // self.cfg.group_size]), current.completions[g]) for g in rows],
                            torch.tensor([current.advantages[g] for g in rows], dtype=torch.float32), self.pad_id, self.stats)
        width = batch.completion_width

        def padded(values: list[list[float]] | None) -> torch.Tensor | None:
            if values is None:
                return None
            out = torch.zeros((len(rows), width), dtype=torch.float32)
            for r, g in enumerate(rows):
                out[r, : len(values[g])] = torch.tensor(values[g], dtype=torch.float32)
            return out
        return replace(batch, old_logps=padded(current.old_logps), ref_logps=padded(current.ref_logps))

    def _group(self, index: int) -> range:
        g = self.current.indices.index(index)
        return range(g * self.cfg.group_size, (g + 1) * self.cfg.group_size)

    # the loop's calls
    def begin_step(self, step: int, indices: list[int]) -> dict:
        """Sample this step's round when it starts one (or the kept round is not this one); its metrics."""
        number = step // self.cfg.iterations
        if self.current is None or self.current.number != number or sorted(self.current.indices) != sorted(indices):
            self.current = self._sample(number, indices)
        self.stats = StepStats()
        metrics = across_processes(self.current.metrics, self.device)  # waits for every rank's round
        self.training = (indices, time.perf_counter())
        return metrics

    def end_step(self) -> dict:
        """The step's KL and clipped share over every process, and its training's tokens per second (the loss's passes and
        the update, without sampling, rewards or the reference); with grpo.target_kl, the penalty's weight moved for the
        next step, and logged."""
        indices, started = self.training
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        trained = sum(map(self.length, indices)) / max(time.perf_counter() - started, 1e-9)
        stats = self.stats.summed(self.device)
        self.penalty.update(stats.mean_kl, int(stats.completions))
        return {**stats.row(self.cfg.beta), **across_processes({"train_tokens_per_s": trained}, self.device),
                **({"beta": self.penalty.value} if self.penalty.adapts else {})}

    def state(self) -> dict:
        """The current round, for a checkpoint: a run resumed inside a round trains on the same completions."""
        round_ = {} if self.current is None else self.current.__dict__.copy()
        return {**round_, **({"beta": self.penalty.value} if self.penalty.adapts else {})}

    def load(self, state: dict) -> None:
        """A checkpoint's round, and the penalty's weight it ended with (grpo.beta when it kept none or this run does not
        adapt it)."""
        state = dict(state)
        saved = state.pop("beta", None)
        self.penalty.value = saved if self.penalty.adapts and saved is not None else self.cfg.beta
        self.current = Round(**state) if state else None

    def restart_step(self) -> None:
        """The step is tried again (with smaller micro-batches, after running out of memory): what it reported is forgotten."""
        self.stats = StepStats()
        self.training = (self.training[0], time.perf_counter())

    def _sample(self, number: int, indices: list[int]) -> Round:
        started = time.perf_counter()
        groups = sample_groups(self.model, self.tokenizer, [self.prompts.ids(i) for i in indices], group_seeds(self.seed, number, indices),
                               self.cfg, self.stops, self.device, self.precision)
        sampled = [s for group in groups for s in group]
        seconds = {"sample_seconds": time.perf_counter() - started}
        forms = [self.prompts.form(i) for i in indices for _ in range(self.cfg.group_size)]
        started = time.perf_counter()
        total, each = self.rewards.score(forms, [s.text for s in sampled], [len(s.ids) for s in sampled])
        seconds["reward_seconds"] = time.perf_counter() - started
        advantages = group_advantages(torch.tensor(total, dtype=torch.float64), self.cfg.group_size, self.cfg.loss == "grpo")
        round_ = Round(number, list(indices), [s.ids for s in sampled], advantages.float().tolist())
        if self.cfg.iterations > 1 or self.reference is not None:
            started = time.perf_counter()
            self._score_round(round_)
            seconds["reference_seconds"] = time.perf_counter() - started
        round_.metrics = self._metrics(total, each, sampled, seconds)
        return round_

    @torch.no_grad()
    def _score_round(self, round_: Round) -> None:
        """The sampling policy's log-probs (needed from the second iteration on) and the reference's, per completion,
        SCORED_PROMPTS groups to a pass."""
        self.current = round_
        old, ref = [], []
        for start in range(0, len(round_.indices), SCORED_PROMPTS):
            batch = self.batch(round_.indices[start : start + SCORED_PROMPTS]).to(self.device)
            mask = batch.completion_mask.bool()
            with autocast(self.device, self.precision):
                if self.cfg.iterations > 1:
                    old += [row[m].tolist() for row, m in zip(completion_logps(self.model, batch, self.cfg.temperature, self.rows), mask)]
                if self.reference is not None:
                    ref += [row[m].tolist() for row, m in zip(self.reference(batch), mask)]
        round_.old_logps = old or None
        round_.ref_logps = ref or None

    def _metrics(self, total: np.ndarray, each: dict[str, np.ndarray], sampled: list[Sampled], seconds: dict[str, float]) -> dict:
        """The round's rewards and completions, and where its time went: sampling, the rewards, the log-prob passes
        before training (the reference's, and the sampling policy's with more than one iteration)."""
        groups = total.reshape(-1, self.cfg.group_size)
        tokens = sum(len(s.ids) for s in sampled)
        return {"reward": float(total.mean()), **{f"reward/{name}": float(values.mean()) for name, values in each.items()},
                "reward_std": float(groups.std(axis=1, ddof=1).mean()),
                "equal_groups": float((groups.max(axis=1) - groups.min(axis=1) < 1e-9).mean()),
                "completion_length": tokens / max(1, len(sampled)), "gen_tokens_per_s": tokens / max(seconds["sample_seconds"], 1e-9),
                **seconds}


SLOWEST = ("sample_seconds", "reward_seconds", "reference_seconds")  # a round takes as long as its slowest rank


def across_processes(metrics: dict, device: torch.device) -> dict:
    """A round's metrics over every process of a distributed run: each rank samples as many groups, so the mean of the
    ranks' means is the run's mean (and a rate is one process's, as the loop's tokens_per_s); times are the slowest's."""
    if not (dist.is_available() and dist.is_initialized()):
        return dict(metrics)
    names = sorted(metrics)
    values = torch.tensor([metrics[name] for name in names], dtype=torch.float64, device=device)
    slowest = values.clone()
    dist.all_reduce(values)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    world = dist.get_world_size()
    return {name: slowest[i].item() if name in SLOWEST else values[i].item() / world for i, name in enumerate(names)}


def reference_logps(model, temperature: float, frozen=None, rows: int | None = None):
    """The reference's log-probs of a GroupBatch: the base with the LoRA adapters switched off, or a frozen copy."""
    if frozen is not None:
        return lambda batch: completion_logps(frozen, batch, temperature, rows)

    def adapters_off(batch: GroupBatch) -> torch.Tensor:
        with model.disable_adapter():
            return completion_logps(model, batch, temperature, rows)
    return adapters_off


__all__ = ["EVAL_ROUND", "GroupBatch", "Rollouts", "Sampled", "completion_logps", "distinct_2", "group_seeds",
           "reference_logps", "sample_groups"]
