"""The distillation loss of a micro-batch: the data's own cross-entropy and the divergence from the teacher at the same
positions, `(1 - alpha) * data + alpha * divergence`, plus `hidden` times the hidden-state distance when it is on."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ..batch import IGNORE
from ..config import DistillConfig
from ..tasks.loss import forward, scored, target_weight
from .hidden import HiddenMatch
from .losses import divergence, masked_mean, topk_divergence


class DistillLoss:
    """Called like the step's other losses (`loss(batch)`, `weight`, `module`, `compiled`). The teacher's side comes
    from `teacher_logits(batch)`, the frozen teacher's forward, or from the batch itself (`Batch.teacher_ids` and
    `teacher_logprobs`, the top-k cache's). `hidden`, with distill.hidden above 0, catches both models' block outputs."""

    def __init__(self, module: torch.nn.Module, teacher_logits, settings: DistillConfig, vocab: int | None,
                 label_smoothing: float = 0.0, hidden: HiddenMatch | None = None):
        self.module, self.teacher_logits, self.settings = module, teacher_logits, settings
        self.vocab, self.label_smoothing, self.hidden = vocab, label_smoothing, hidden

    @staticmethod
    def weight(batch) -> float:
        return target_weight(batch)

    @property
    def compiles(self) -> bool:
        """Whether compiling the step can pay: not with the hooks that catch block outputs, which would break the graph
        at every block."""
        return self.hidden is None

    def compiled(self) -> "DistillLoss":
        if not self.compiles:
            return self
        return DistillLoss(torch.compile(self.module), self.teacher_logits, self.settings, self.vocab, self.label_smoothing)

    def __call__(self, batch) -> torch.Tensor:
        alpha = self.settings.alpha
        with self.hidden.catching() if self.hidden is not None else nullcontext():
            logits = forward(self.module, batch)
            teacher = self.teacher_logits(batch) if batch.teacher_ids is None and (alpha or self.hidden is not None) else None
        student, targets, weights = scored(logits, batch)
        losses = F.cross_entropy(student.float(), targets, reduction="none", ignore_index=IGNORE, label_smoothing=self.label_smoothing)
        loss = masked_mean(losses, weights)
        if alpha:
            loss = (1 - alpha) * loss + alpha * masked_mean(self.divergences(student, teacher, batch), weights)
        if self.hidden is not None:
            loss = loss + self.settings.hidden * self.hidden.distance(batch)
        return loss

    def divergences(self, student: torch.Tensor, teacher: torch.Tensor | None, batch) -> torch.Tensor:
        """Each scored position's divergence from the teacher (its logits `teacher`, or the batch's top k)."""
        kind, temperature = self.settings.loss, self.settings.temperature
        if self.vocab is not None:  # rows past the tokenizer (a padded embedding) are never real tokens
            student = student[..., : self.vocab]
        if batch.teacher_ids is not None:
            return topk_divergence(student, batch.teacher_ids, batch.teacher_logprobs, kind, temperature)
        teacher, _, _ = scored(teacher, batch)
        if self.vocab is not None:
            teacher = teacher[..., : self.vocab]
        return divergence(student, teacher, kind, temperature)
