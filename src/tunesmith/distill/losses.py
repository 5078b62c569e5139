"""The divergences a student learns its teacher's distributions by, per scored position, in fp32.

Each is taken between the two models' distributions at temperature T (both logits divided by T) and multiplied by
T squared, so that its gradients keep their scale as T changes (Hinton et al., 2015). Forward KL is KL(teacher ||
student), the classic distillation loss (zero when the student matches); reverse KL is KL(student || teacher); jsd
is the Jensen-Shannon divergence, KL of each against their even mixture, averaged. With the teacher's top k tokens
only (`topk_divergence`), the divergence is over those k tokens and the rest of the vocabulary as one outcome.
"""

from __future__ import annotations

import math

import torch

KINDS = ("forward_kl", "reverse_kl", "jsd")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension; terms where p is 0 count 0 (a token the model rules out)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def between(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """The divergence of each position's two log-distributions (..., V) -> (...)."""
    if kind == "forward_kl":
        return _kl(teacher_logp, student_logp)
    if kind == "reverse_kl":
        return _kl(student_logp, teacher_logp)
    if kind == "jsd":
        mixture = torch.logaddexp(teacher_logp, student_logp) - math.log(2)
        return 0.5 * _kl(teacher_logp, mixture) + 0.5 * _kl(student_logp, mixture)
    raise ValueError(f"unknown divergence {kind!r}; one of {', '.join(KINDS)}")


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """Per position (..., V) -> (...): the divergence at `temperature`, times its square."""
    student = torch.log_softmax(student_logits.float() / temperature, -1)
    teacher = torch.log_softmax(teacher_logits.float() / temperature, -1)
    return between(student, teacher, kind) * temperature**2


REST_FLOOR = 1e-6  # the smallest mass the rest of the vocabulary is given, for both models: below it the sum of k float
                  # probabilities is rounding, and a rest of exactly 0 would make reverse KL infinite for any student


def topk_divergence(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor, kind: str,
                    temperature: float = 1.0) -> torch.Tensor:
    """Per position: the divergence over the teacher's top k tokens (`teacher_ids`, (..., k)) and the rest of the
    vocabulary as one outcome, from the teacher's log-probabilities of those tokens at `temperature`
    (`teacher_logprobs`) and the student's at the same temperature; times its square.

    With k the whole vocabulary it is the full divergence; with fewer, the rest's mass still counts, so the student is
    pulled to put on the k tokens the share the teacher puts there. The student's rest is summed over its other
    tokens; the teacher's is 1 minus the mass of its k; each is at least REST_FLOOR.
    """
    ids = teacher_ids.long()
    student = torch.log_softmax(student_logits.float() / temperature, -1)
    floor = math.log(REST_FLOOR)
    student_rest = student.scatter(-1, ids, -1e4).logsumexp(-1, keepdim=True).clamp_min(floor)  # -1e4, not -inf: no 0 * inf gradient
    teacher = teacher_logprobs.float()
    mass = teacher.exp().sum(-1, keepdim=True).clamp(max=1 - REST_FLOOR)
    teacher_rest = torch.log1p(-mass).clamp_min(floor)
    return between(torch.cat([student.gather(-1, ids), student_rest], -1), torch.cat([teacher, teacher_rest], -1), kind) * temperature**2


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted mean over scored positions (0 when none carries weight)."""
    return (values * weights).sum() / weights.sum().clamp_min(1e-9)
