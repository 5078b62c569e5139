"""GRPO's objective on completions' per-token log-probabilities, as in DeepSeekMath (Shao et al., 2024) and TRL:

- advantages: each completion's reward minus its group's mean, divided by the group's standard deviation (grpo) or
  not (dr_grpo, Liu et al., 2025: the division favours groups whose rewards hardly differ);
- per token: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), ratio = pi / pi_old, plus beta times the k3 estimate
  of KL(pi || pi_ref), exp(ref - logp) - (ref - logp) - 1;
- per batch: grpo averages each completion's tokens, then the completions; dr_grpo sums every token and divides by
  completions x max_new_tokens, so a long completion's tokens weigh what a short one's do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

STD_FLOOR = 1e-4  # TRL's: a group whose rewards are all equal gets advantages of 0, not a division by 0


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool) -> torch.Tensor:
    """(N,) rewards of N / group_size groups of consecutive completions -> (N,) advantages."""
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + STD_FLOOR)
    return centred.reshape(-1)


@dataclass(frozen=True)
class TokenTerms:
    """The per-token pieces of one batch's loss, and what the logs report of them."""

    loss: torch.Tensor  # (B, T) per-token loss, before the mask
    kl: torch.Tensor | None  # (B, T) the k3 estimate, when beta > 0
    clipped: torch.Tensor  # (B, T) bool: the clipped side of the minimum was taken


def token_terms(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None, advantages: torch.Tensor,
                epsilon: float, beta: float) -> TokenTerms:
    ratio = torch.exp(logps - old_logps)
    advantage = advantages[:, None]
    unclipped, clipped = ratio * advantage, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantage
    loss = -torch.min(unclipped, clipped)
    kl = None
    if beta:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta * kl
    return TokenTerms(loss, kl, clipped < unclipped)


def reduce_loss(per_token: torch.Tensor, mask: torch.Tensor, kind: str, max_new_tokens: int) -> torch.Tensor:
    """The batch's loss: grpo, the mean over completions of each one's token mean; dr_grpo, the token sum over
    completions x max_new_tokens."""
    mask = mask.to(per_token.dtype)
    if kind == "dr_grpo":
        return (per_token * mask).sum() / (per_token.shape[0] * max_new_tokens)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1)).mean()


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, kind: str, epsilon: float, beta: float, max_new_tokens: int) -> tuple[torch.Tensor, TokenTerms]:
    """The loss of one batch of completions; `old_logps` None when the completions were just sampled from this very
    policy (one iteration), where the ratio is 1 but its gradient is that of the policy's log-prob."""
    terms = token_terms(logps, logps.detach() if old_logps is None else old_logps, ref_logps, advantages, epsilon, beta)
    return reduce_loss(terms.loss, mask, kind, max_new_tokens), terms


class KLPenalty:
    """The weight of the KL penalty: grpo.beta throughout, or, with grpo.target_kl, raised after each step whose KL was
    above the target and lowered after one below, never under grpo.beta. The controller is Ziegler et al.'s (2019), as in
    TRL's PPO and verl, in its exponential form so that no batch size can turn it negative:
    beta *= exp(clip(kl / target - 1, -0.2, 0.2) * min(completions / horizon, 1)), so one step moves it by a factor of
    at most e^0.2, and it stays within 100 times grpo.beta.
    A fixed beta lets a run that finds a reward it can exploit pull as far from the base as the reward pays for; the
    controller raises the penalty until the KL comes back to the target. grpo.beta is its floor because a run starts
    at a KL of 0: left to fall, the penalty would be gone before the policy had moved at all, and nothing would hold it
    back when it first runs."""

    PROPORTIONAL_LIMIT = 0.2
    CEILING = 100  # times grpo.beta: past it the penalty pins the policy anyway, and an unreachable target cannot run it to infinity

    def __init__(self, beta: float, target: float | None = None, horizon: int = 1):
        self.value, self.floor, self.target, self.horizon = beta, beta, target, horizon

    @property
    def adapts(self) -> bool:
        """Whether the weight moves (and so is logged and checkpointed)."""
        return self.target is not None

    def update(self, kl: float, completions: int) -> None:
        """After a step whose completions had `kl` nats per token from the reference; a step without a finite KL (none
        measured, or a diverged one) leaves the weight as it was."""
        if not self.adapts or not math.isfinite(kl) or not completions:
            return
        error = min(max(kl / self.target - 1, -self.PROPORTIONAL_LIMIT), self.PROPORTIONAL_LIMIT)
        moved = self.value * math.exp(error * min(completions / self.horizon, 1.0))  # at most e^0.2 a step
        self.value = min(max(self.floor, moved), self.CEILING * self.floor)
