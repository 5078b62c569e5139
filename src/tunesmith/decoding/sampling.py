"""Choosing the next token for each row of a batch, each row with its own settings and its own random generator.

Rows of one batch belong to different requests: one greedy, one at temperature 0.9 with top-p 0.9, one
with a presence penalty and a seed. Everything is done on the whole (rows, vocabulary) tensor at once; only
each row's one uniform number comes from its own generator, so a seeded request repeats whatever shares its batch.
The penalties follow the references: OpenAI's frequency and presence penalties over the generated tokens,
CTRL's repetition penalty and `no_repeat_ngram` as transformers applies them, over prompt and text.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingSettings:
    """One choice's sampling, as an OpenAI request states it (frequency/presence penalties as OpenAI defines them)."""

    temperature: float = 1.0  # 0 is greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 keeps every token
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 is off; 1.1-1.3 discourages any token already in the prompt or the text
    no_repeat_ngram: int = 0  # 0 is off; n forbids any n-gram from appearing twice in prompt and text

    @property
    def counted(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty)


class RowTokens(Protocol):
    """What the penalties read of a row: its prompt, what it has generated, and the tokens its n-gram rule bans now."""

    prompt: list[int]
    generated: list[int]

    def banned(self) -> list[int]: ...


class RepeatedNgrams:
    """The tokens that would complete an n-gram already in the sequence, kept up to date one token at a time."""

    def __init__(self, size: int, tokens: list[int]):
        self.size = size
        self.followers: dict[tuple[int, ...], set[int]] = {}
        self.tail: deque[int] = deque(maxlen=size - 1)
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        if len(self.tail) == self.size - 1:
            self.followers.setdefault(tuple(self.tail), set()).add(token)
        if self.size > 1:
            self.tail.append(token)

    def banned(self) -> list[int]:
        return sorted(self.followers.get(tuple(self.tail), ()))


def finite_scores(scores: torch.Tensor) -> torch.Tensor:
    """Scores a softmax can take: a legal but extreme setting (a repetition penalty of 1e-30) overflows to inf, and one
    row's NaN would stop the draw of every row in its batch. A row with nothing left to draw from draws uniformly."""
    scores = scores.nan_to_num(nan=float("-inf"), posinf=torch.finfo(scores.dtype).max)
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
    return scores.masked_fill(empty, 0.0)


class RowSampler:
    """The settings of a fixed set of rows as tensors; rebuilt whenever rows join or leave the batch."""

    def __init__(self, settings: list[SamplingSettings], generators: list[torch.Generator | None], vocab_size: int,
                 device: torch.device):
        self.generators = generators
        self.temperature = torch.tensor([s.temperature for s in settings], device=device)
        self.top_p = torch.tensor([s.top_p for s in settings], device=device)
        self.top_k = torch.tensor([min(s.top_k, vocab_size) or vocab_size for s in settings], device=device)
        self.greedy = [s.temperature == 0 for s in settings]
        cuts = [s.temperature > 0 and (s.top_p < 1 or 0 < s.top_k < vocab_size) for s in settings]
        self.truncates = any(cuts)
        self.cuts = torch.tensor(cuts, device=device)[:, None]  # the rows the cut applies to: a float sum past 1 cuts no other
        self.counted = any(s.counted for s in settings)
        self.repeats = any(s.repetition_penalty != 1 for s in settings)
        self.ngrams = any(s.no_repeat_ngram > 0 for s in settings)
        self.frequency = torch.tensor([s.frequency_penalty for s in settings], device=device)[:, None]
        self.presence = torch.tensor([s.presence_penalty for s in settings], device=device)[:, None]
        self.repetition = torch.tensor([s.repetition_penalty for s in settings], device=device)[:, None]

    @property
    def penalized(self) -> bool:
        return self.counted or self.repeats or self.ngrams

    def penalize(self, logits: torch.Tensor, rows: list[RowTokens]) -> torch.Tensor:
        """The logits after each row's penalties, in transformers' order: repetition, n-grams, then OpenAI's two."""
        if not self.penalized:
            return logits
        if self.repeats:
            seen = torch.zeros_like(logits, dtype=torch.bool)
            for row, tokens in enumerate(rows):
                seen[row, torch.tensor(tokens.prompt + tokens.generated, dtype=torch.long, device=logits.device)] = True
            penalized = torch.where(logits > 0, logits / self.repetition, logits * self.repetition)
            logits = torch.where(seen, penalized, logits)
        if self.ngrams:
            logits = logits.clone()
            for row, tokens in enumerate(rows):
                banned = tokens.banned()
                if banned:
                    logits[row, banned] = float("-inf")
        if self.counted:
            counts = torch.zeros_like(logits)
            for row, tokens in enumerate(rows):
                if tokens.generated:
                    ids = torch.tensor(tokens.generated, dtype=torch.long, device=logits.device)
                    counts[row].index_add_(0, ids, torch.ones(len(ids), device=logits.device))
            logits = logits - self.frequency * counts - self.presence * (counts > 0).to(logits.dtype)
        return logits

    def choose(self, logits: torch.Tensor) -> list[int]:
        """The next token of each row from its (rows, vocabulary) float logits."""
        if all(self.greedy):
            return logits.argmax(dim=-1).tolist()
        scaled = finite_scores(logits / self.temperature.clamp_min(1e-6)[:, None])
        if self.truncates:  # the cut is found in ranked order and applied in the vocabulary's, where every row draws
            ordered, order = scaled.sort(dim=-1, descending=True)
            ranks = torch.arange(ordered.shape[-1], device=ordered.device)
            ranked = ordered.softmax(dim=-1)
            before = ranked.cumsum(dim=-1) - ranked  # the probability mass ranked above each token
            dropped = ((ranks[None, :] >= self.top_k[:, None]) | (before > self.top_p[:, None])) & self.cuts
            scaled = scaled.masked_fill(torch.zeros_like(dropped).scatter(1, order, dropped), float("-inf"))
        picks = draw(scaled.softmax(dim=-1), self.generators, self.greedy)
        if any(self.greedy):
            picks = torch.where(torch.tensor(self.greedy, device=picks.device), logits.argmax(dim=-1), picks)
        return picks.tolist()


def draw(probs: torch.Tensor, generators: list[torch.Generator | None], skip: list[bool]) -> torch.Tensor:
    """One index per row of (rows, vocabulary) probabilities, each row with a positive sum, by inverting each row's
    cumulative sum at one uniform number from the row's own generator (the device's default one where it has none;
    none drawn for the rows to `skip`). `torch.multinomial` draws a random number for every entry of the vocabulary,
    one row at a time when each row has its own generator; one number per row lets the whole batch search at once.
    The sums are in float64 (float32 on Apple's GPUs, which have no float64), so a token's share of the unit interval
    is its probability to about 1e-16 (6e-8 there); an index whose probability is 0 is never drawn, since the search
    takes the first sum strictly above a number kept below the row's total."""
    precise = torch.float32 if probs.device.type == "mps" else torch.float64
    uniform = torch.stack([torch.zeros((), dtype=precise, device=probs.device) if skipped else
                           torch.rand((), generator=generator, dtype=precise,
                                      device=generator.device if generator is not None else probs.device).to(probs.device)
                           for generator, skipped in zip(generators, skip)])
    sums = probs.to(precise).cumsum(dim=-1)
    total = sums[:, -1]
    targets = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))[:, None]  # below the total
    return torch.searchsorted(sums, targets, right=True)[:, 0].clamp_max(probs.shape[-1] - 1)
