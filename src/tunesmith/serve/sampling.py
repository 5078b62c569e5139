"""Choosing the next token for each row of a batch, each row with its own settings and its own random generator.

Rows of one batch belong to different requests: one greedy, one at temperature 0.9 with top-p 0.9, one
with a presence penalty and a seed. Everything is done on the whole (rows, vocabulary) tensor at once;
only the final draw loops over rows, so that a seeded request repeats whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingSettings:
    """One choice's sampling, as an OpenAI request states it (frequency/presence penalties as OpenAI defines them)."""

    temperature: float = 1.0  # 0 is greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 keeps every token
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    @property
    def penalized(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty)


class RowSampler:
    """The settings of a fixed set of rows as tensors; rebuilt whenever rows join or leave the batch."""

    def __init__(self, settings: list[SamplingSettings], generators: list[torch.Generator | None], vocab_size: int,
                 device: torch.device):
        self.generators = generators
        self.temperature = torch.tensor([s.temperature for s in settings], device=device)
        self.top_p = torch.tensor([s.top_p for s in settings], device=device)
        self.top_k = torch.tensor([s.top_k or vocab_size for s in settings], device=device)
        self.greedy = [s.temperature == 0 for s in settings]
        self.truncates = any(s.top_p < 1 or 0 < s.top_k < vocab_size for s in settings if s.temperature > 0)
        self.penalized = any(s.penalized for s in settings)
        if self.penalized:
            self.frequency = torch.tensor([s.frequency_penalty for s in settings], device=device)[:, None]
            self.presence = torch.tensor([s.presence_penalty for s in settings], device=device)[:, None]

    def penalize(self, logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """OpenAI's penalties: minus frequency x count and presence x (count > 0), over the tokens generated so far."""
        if not self.penalized:
            return logits
        return logits - self.frequency * counts - self.presence * (counts > 0).to(logits.dtype)

    def choose(self, logits: torch.Tensor) -> list[int]:
        """The next token of each row from its (rows, vocabulary) float logits."""
        if all(self.greedy):
            return logits.argmax(dim=-1).tolist()
        scaled = logits / self.temperature.clamp_min(1e-6)[:, None]
        if self.truncates:
            ordered, order = scaled.sort(dim=-1, descending=True)
            ranks = torch.arange(ordered.shape[-1], device=ordered.device)
            probs = ordered.softmax(dim=-1)
            before = probs.cumsum(dim=-1) - probs  # the probability mass ranked above each token
            dropped = (ranks[None, :] >= self.top_k[:, None]) | (before > self.top_p[:, None])
            probs = ordered.masked_fill(dropped, float("-inf")).softmax(dim=-1)
        else:
            order, probs = None, scaled.softmax(dim=-1)
        chosen = []
        greedy_tokens = logits.argmax(dim=-1).tolist() if any(self.greedy) else None
        for row, generator in enumerate(self.generators):
            if self.greedy[row]:
                chosen.append(greedy_tokens[row])
                continue
            pick = int(torch.multinomial(probs[row], 1, generator=generator))
            chosen.append(int(order[row, pick]) if order is not None else pick)
        return chosen
