"""The preference objectives (DPO, ORPO, KTO) on answers' log-probabilities, the module that computes those, and
the metrics of a validation pass.

Every objective takes the rows of a batch as `PreferenceExamples` lays them out: a pair's chosen row then its
rejected row (DPO, ORPO), or single answers followed by one KL row each (KTO). The formulas are the papers':
- DPO (Rafailov et al., 2023): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), on summed log-probs;
- ORPO (Hong et al., 2024): NLL of the chosen answer (per token) - lambda * log sigmoid(log odds_c - log odds_r),
  the odds of an answer from its mean per-token log-prob, odds = p / (1 - p);
- KTO (Ethayarajh et al., 2024): w_D (1 - sigmoid(beta (r - z))) for desirable answers, w_U (1 - sigmoid(beta (z - r)))
  for undesirable ones, r = pi - ref, z = max(0, mean over the KL rows of pi - ref), held fixed (no gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..batch import IGNORE, Batch
from ..config import PreferenceConfig
from ..data.preferences import CHOSEN, DESIRABLE, KL_ROW, REJECTED, UNDESIRABLE
from ..models.parts import output_parts


def dpo_losses(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
               beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) of p = exp(mean_logp), stable near p = 1."""
    mean_logp = mean_logp.clamp(max=-1e-6)
    return mean_logp - torch.log(-torch.expm1(mean_logp))


def orpo_losses(mean_chosen: torch.Tensor, mean_rejected: torch.Tensor, lam: float) -> torch.Tensor:
    return -mean_chosen - lam * F.logsigmoid(log_odds(mean_chosen) - log_odds(mean_rejected))


def kto_losses(ratios: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, beta: float, desirable_weight: float,
               undesirable_weight: float) -> torch.Tensor:
    return torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratios - kl))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratios))))


@dataclass(frozen=True)
class Objective:
    """One preference method with its settings: per-item losses from the rows' log-probabilities."""

    cfg: PreferenceConfig

    @property
    def method(self) -> str:
        return self.cfg.method

    @property
    def paired(self) -> bool:
        return self.method != "kto"

    @property
    def needs_reference(self) -> bool:
        return self.method != "orpo"

    def items(self, codes: torch.Tensor) -> int:
        """How many items (pairs, or single answers) a batch's rows hold."""
        return int((codes == CHOSEN).sum() if self.paired else (codes >= 0).sum())

    def losses(self, policy: torch.Tensor, counts: torch.Tensor, codes: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        """(items,) losses; `policy` and `reference` are summed log-probs of each row's answer, `counts` its tokens."""
        cfg = self.cfg
        if self.method == "orpo":
            mean = policy / counts.clamp_min(1)
            return orpo_losses(mean[codes == CHOSEN], mean[codes == REJECTED], cfg.orpo_lambda)
        if reference is None:
            raise ValueError(f"{self.method} needs the reference model's log-probabilities")
        ratios = policy - reference.to(policy.dtype)
        if self.method == "dpo":
            chosen, rejected = codes == CHOSEN, codes == REJECTED
            return dpo_losses(policy[chosen], policy[rejected], reference[chosen].to(policy.dtype), reference[rejected].to(policy.dtype),
                              cfg.beta)
        kl_rows, answers = codes == KL_ROW, codes >= 0
        kl = ratios[kl_rows].mean().clamp_min(0).detach() if kl_rows.any() else ratios.new_zeros(())
        desirable = (codes[answers] == CHOSEN) | (codes[answers] == DESIRABLE)
        return kto_losses(ratios[answers], desirable, kl, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout off, as TRL does for preference tuning: the log-prob ratios then measure the weights, not the noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


class SequenceLogps(torch.nn.Module):
    """Each row's summed log-probability of its answer tokens, and how many there are.

    Only the answer positions go through the output layer (through the decoder stack and the output layer
    separately, where the model has the usual parts): a prompt's logits are never made. A module, so that
    DistributedDataParallel wraps what runs forward.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.parts = output_parts(model)  # a tuple: the modules stay registered once, under `model`

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = labels[:, 1:]
        keep = targets != IGNORE
        if self.parts is not None:
            backbone, head = self.parts
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state[:, :-1]
            logits = head(hidden[keep])
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1][keep]
        token_logps = -F.cross_entropy(logits.float(), targets[keep], reduction="none")
        rows = keep.nonzero()[:, 0]
        sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device).index_add(0, rows, token_logps)
        return sums, keep.sum(1)

    def of(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self(batch.input_ids, batch.attention_mask, batch.labels)


class PreferenceLoss:
    """The training loss of a preference micro-batch: the mean of its items' losses.

    `reference(batch)` gives the reference log-probs when they were not computed before training.
    """

    def __init__(self, module: torch.nn.Module, objective: Objective, reference=None):
        self.module, self.objective, self.reference = module, objective, reference

    def __call__(self, batch: Batch) -> torch.Tensor:
        policy, counts = self.module(batch.input_ids, batch.attention_mask, batch.labels)
        reference = batch.reference
        if reference is None and self.objective.needs_reference:
            reference = self.reference(batch)
        return self.objective.losses(policy, counts, batch.preference, reference).mean()

    def weight(self, batch: Batch) -> float:
        return float(self.objective.items(batch.preference))

    def compiled(self) -> "PreferenceLoss":
        return PreferenceLoss(torch.compile(self.module), self.objective, self.reference)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def preference_metrics(codes: np.ndarray, policy: np.ndarray, counts: np.ndarray, reference: np.ndarray | None,
                       beta: float, method: str) -> dict:
    """Metrics over stored answers in order (a pair's chosen right before its rejected): the likelihood preference
    accuracy (summed log-prob of chosen above rejected), the log-probs, and the implicit rewards with a reference."""
    chosen = np.flatnonzero((codes[:-1] == CHOSEN) & (codes[1:] == REJECTED)) if len(codes) > 1 else np.zeros(0, dtype=np.int64)
    rejected = chosen + 1
    pc, pr = policy[chosen], policy[rejected]
    out = {
        "pairs": int(len(chosen)),
        "likelihood_accuracy": _mean((pc > pr).astype(np.float64)),
        "chosen_logp": _mean(pc), "rejected_logp": _mean(pr), "logp_margin": _mean(pc - pr),
        "chosen_logp_per_token": float(pc.sum() / max(counts[chosen].sum(), 1)) if len(chosen) else math.nan,
        "rejected_logp_per_token": float(pr.sum() / max(counts[rejected].sum(), 1)) if len(chosen) else math.nan,
    }
    if method == "orpo":  # no reference: the implicit reward is the log odds of the answer
        odds = log_odds(torch.from_numpy(pc / np.maximum(counts[chosen], 1))) - log_odds(torch.from_numpy(pr / np.maximum(counts[rejected], 1)))
        out.update(reward_accuracy=_mean((odds > 0).numpy().astype(np.float64)), reward_margin=_mean(odds.numpy()))
    elif reference is not None:
        rewards = beta * (policy - reference)
        out.update(reward_accuracy=_mean((rewards[chosen] > rewards[rejected]).astype(np.float64)),
                   reward_margin=_mean(rewards[chosen] - rewards[rejected]),
                   chosen_reward=_mean(rewards[chosen]), rejected_reward=_mean(rewards[rejected]))
        if ((codes == DESIRABLE) | (codes == UNDESIRABLE)).any():
            out.update(desirable_reward=_mean(rewards[codes == DESIRABLE]), undesirable_reward=_mean(rewards[codes == UNDESIRABLE]))
    return out
