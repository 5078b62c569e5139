"""The distillation loss of a micro-batch: the data's own cross-entropy and the divergence from the teacher at the same
positions, `(1 - alpha) * data + alpha * divergence`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batch import IGNORE
from ..config import DistillConfig
from ..tasks.loss import forward, scored, target_weight
from .losses import divergence, masked_mean, topk_divergence


class DistillLoss:
    """Called like the step's other losses (`loss(batch)`, `weight`, `module`, `compiled`). The teacher's side comes
    from `teacher_logits(batch)`, the frozen teacher's forward, or from the batch itself (`Batch.teacher_ids` and
    `teacher_logprobs`, the top-k cache's)."""

    def __init__(self, module: torch.nn.Module, teacher_logits, settings: DistillConfig, vocab: int | None,
                 label_smoothing: float = 0.0):
        self.module, self.teacher_logits, self.settings = module, teacher_logits, settings
        self.vocab, self.label_smoothing = vocab, label_smoothing

    @staticmethod
    def weight(batch) -> float:
        return target_weight(batch)

    def compiled(self) -> "DistillLoss":
        return DistillLoss(torch.compile(self.module), self.teacher_logits, self.settings, self.vocab, self.label_smoothing)

    def __call__(self, batch) -> torch.Tensor:
        student, targets, weights = scored(forward(self.module, batch), batch)
        losses = F.cross_entropy(student.float(), targets, reduction="none", ignore_index=IGNORE, label_smoothing=self.label_smoothing)
        data = masked_mean(losses, weights)
        alpha = self.settings.alpha
        if alpha == 0:
            return data
        return (1 - alpha) * data + alpha * masked_mean(self.divergences(student, batch), weights)

    def divergences(self, student: torch.Tensor, batch) -> torch.Tensor:
        """Each scored position's divergence from the teacher."""
        kind, temperature = self.settings.loss, self.settings.temperature
        if self.vocab is not None:  # rows past the tokenizer (a padded embedding) are never real tokens
            student = student[..., : self.vocab]
        if batch.teacher_ids is not None:
            return topk_divergence(student, batch.teacher_ids, batch.teacher_logprobs, kind, temperature)
        teacher, _, _ = scored(self.teacher_logits(batch), batch)
        if self.vocab is not None:
            teacher = teacher[..., : self.vocab]
        return divergence(student, teacher, kind, temperature)
