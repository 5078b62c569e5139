"""The distillation loss of a micro-batch: the data's own cross-entropy and the divergence from the teacher at the same
positions, `(1 - alpha) * data + alpha * divergence`, plus `hidden` times the hidden-state distance when it is on.

For a language model whose output layer allows it (`models.parts.output_parts`), both models run their decoder stacks
only and the loss goes through the output layers over chunks of positions (`fused.py`): the same arithmetic, with no
logits over the vocabulary held whole.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ..batch import IGNORE
from ..config import DistillConfig
from ..models.parts import output_parts, padded_rows, vocab_multiple
from ..tasks.loss import forward, scored, target_weight
from .fused import chunked_output_loss
from .hidden import HiddenMatch
from .losses import divergence, masked_mean, topk_divergence


class DistillLoss:
    """Called like the step's other losses (`loss(batch)`, `weight`, `module`, `compiled`). The teacher's side comes
    from `teacher`, the frozen teacher's model, or from the batch itself (`Batch.teacher_ids` and `teacher_logprobs`,
    the top-k cache's). `hidden`, with distill.hidden above 0, catches both models' block outputs. With `fuse`, the
    output layers are folded into the loss where the student's allows it (and the teacher's, when it runs beside);
    `parts`, the student's decoder stack and output layer where they are not `output_parts(module)` (a compiled stack)."""

    def __init__(self, module: torch.nn.Module, teacher: torch.nn.Module, settings: DistillConfig, vocab: int | None,
                 label_smoothing: float = 0.0, hidden: HiddenMatch | None = None, fuse: bool = False,
                 parts: tuple[torch.nn.Module, torch.nn.Linear] | None = None):
        self.module, self.teacher, self.settings = module, teacher, settings
        self.vocab, self.label_smoothing, self.hidden, self.fuse = vocab, label_smoothing, hidden, fuse
        self.parts = parts or (output_parts(module) if fuse and vocab is not None else None)
        self.teacher_parts = output_parts(teacher) if self.parts is not None else None

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
        parts = (torch.compile(self.parts[0]), self.parts[1]) if self.parts is not None else None  # what the fused path runs
        return DistillLoss(torch.compile(self.module), self.teacher, self.settings, self.vocab, self.label_smoothing,
                           fuse=self.fuse, parts=parts)

    def __call__(self, batch) -> torch.Tensor:
        needs_teacher = batch.teacher_ids is None and (self.settings.alpha or self.hidden is not None)
        fused = self.parts is not None and (self.teacher_parts is not None or not needs_teacher)
        with self.hidden.catching() if self.hidden is not None else nullcontext():
            loss = self._fused(batch, needs_teacher) if fused else self._whole(batch, needs_teacher)
        if self.hidden is not None:
            loss = loss + self.settings.hidden * self.hidden.distance(batch)
        return loss

    def _whole(self, batch, needs_teacher: bool) -> torch.Tensor:
        """Through both models' logits, made whole."""
        logits = forward(self.module, batch)
        teacher = None
        if needs_teacher:
            with torch.no_grad():
                teacher = forward(self.teacher, batch)
        student, targets, weights = scored(logits, batch)
        if teacher is not None:
            teacher = scored(teacher, batch)[0]
        return masked_mean(self.position_losses(student, targets, teacher, batch.teacher_ids, batch.teacher_logprobs), weights)

    def _fused(self, batch, needs_teacher: bool) -> torch.Tensor:
        """Through the decoder stacks' hidden states, the output layers folded into the loss over chunks of positions."""
        backbone, head = self.parts
        hidden, targets, weights = scored(backbone(**batch.model_inputs(), use_cache=False).last_hidden_state, batch)
        teacher_hidden = teacher_weight = None
        if needs_teacher:
            teacher_backbone, teacher_head = self.teacher_parts
            with torch.no_grad():
                teacher_hidden = scored(teacher_backbone(**batch.model_inputs(), use_cache=False).last_hidden_state, batch)[0]
            vocab = teacher_head.weight.shape[0]
            if self.settings.alpha:  # else the teacher ran for the hidden states only
                teacher_weight = padded_rows(teacher_head.weight, vocab_multiple(hidden.device))
        ids, logprobs = batch.teacher_ids, batch.teacher_logprobs

        def score(logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
            teacher = None
            if teacher_weight is not None:
                with torch.no_grad():
                    teacher = (teacher_hidden[start:end].to(teacher_weight.dtype) @ teacher_weight.T)[:, :vocab]
            return self.position_losses(logits, targets[start:end], teacher, None if ids is None else ids[start:end],
                                        None if logprobs is None else logprobs[start:end])

        return chunked_output_loss(hidden, head.weight, weights, score)

    def position_losses(self, student: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None,
                        teacher_ids: torch.Tensor | None, teacher_logprobs: torch.Tensor | None) -> torch.Tensor:
        """Each scored position's loss: the data's cross-entropy, mixed with the divergence from the teacher (its logits
        `teacher`, or its cached top k) by distill.alpha."""
        losses = F.cross_entropy(student.float(), targets, reduction="none", ignore_index=IGNORE, label_smoothing=self.label_smoothing)
        alpha = self.settings.alpha
        if not alpha:
            return losses
        return (1 - alpha) * losses + alpha * self.divergences(student, teacher, teacher_ids, teacher_logprobs)

    def divergences(self, student: torch.Tensor, teacher: torch.Tensor | None, teacher_ids: torch.Tensor | None,
                    teacher_logprobs: torch.Tensor | None) -> torch.Tensor:
        """Each scored position's divergence from the teacher (its logits `teacher`, or its top k)."""
        kind, temperature = self.settings.loss, self.settings.temperature
        if self.vocab is not None:  # rows past the tokenizer (a padded embedding) are never real tokens
            student = student[..., : self.vocab]
        if teacher_ids is not None:
            return topk_divergence(student, teacher_ids, teacher_logprobs, kind, temperature)
        if self.vocab is not None:
            teacher = teacher[..., : self.vocab]
        return divergence(student, teacher, kind, temperature)
