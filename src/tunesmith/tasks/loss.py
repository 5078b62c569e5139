"""Next-token cross-entropy over packed blocks, and the validation pass built on it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..batch import IGNORE, Batch
from ..data import TokenBlocks
from ..data.examples import Examples
from ..errors import UserError
from ..measures import perplexity
from ..runtime import autocast, with_oom_backoff


def forward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits: (B, T, vocab) for a language model, (B, classes) for a classification head (N, classes packed)."""
    if batch.ends is not None:
        return model(**batch.model_inputs(), ends=batch.ends).logits
    if batch.classes is not None:
        return model(**batch.model_inputs()).logits
    return model(**batch.model_inputs(), use_cache=False).logits


def _targets(batch: Batch) -> torch.Tensor:
    """(B, T-1) next-token targets, IGNORE where no loss falls; or (B,) classes."""
    if batch.classes is not None:
        return batch.classes
    return (batch.labels if batch.labels is not None else batch.input_ids)[:, 1:]


def _term_weights(batch: Batch, targets: torch.Tensor) -> torch.Tensor:
    """1 where a target carries loss (0 where it is IGNORE), times the example's class weight if any."""
    weights = (targets != IGNORE).float()
    if batch.weights is not None:
        weights = weights * (batch.weights if weights.dim() == 1 else batch.target_weights(targets))
    return weights


def scored(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits of the terms that carry loss, flat (N, vocab or classes), with their targets and weights, in the
    batch's row-major order: the positions a loss reads (next-token targets, or one class per example)."""
    targets = _targets(batch)
    if batch.classes is None:
        logits = logits[:, :-1]
    weights = _term_weights(batch, targets)
    if batch.labels is not None:
        keep = targets != IGNORE
        return logits[keep], targets[keep], weights[keep]
    return logits.flatten(0, -2), targets.flatten(), weights.flatten()


def term_losses(logits: torch.Tensor, batch: Batch, label_smoothing: float = 0.0,
                with_correct: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Flat fp32 losses of the terms that carry loss, their weights, and (optionally) whether each was predicted right.

    With a loss mask only the targets' logits are upcast and scored: most of a conversation's
    positions carry no loss, and the vocabulary-wide softmax is the costly part.
    """
    logits, targets, weights = scored(logits, batch)
    losses = F.cross_entropy(logits.float(), targets, reduction="none", ignore_index=IGNORE, label_smoothing=label_smoothing)
    correct = (logits.argmax(-1) == targets) if with_correct else None
    return losses, weights, correct


def target_weight(batch: Batch) -> float:
    """The batch's total loss weight (its target count, class-weighted): its share of a step."""
    return float(_term_weights(batch, _targets(batch)).sum())


def batch_loss(model: torch.nn.Module, batch: Batch | torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The weighted mean loss over the batch's targets."""
    if isinstance(batch, torch.Tensor):
        batch = Batch(batch)
    losses, weights, _ = term_losses(forward(model, batch), batch, label_smoothing)
    return (losses * weights).sum() / weights.sum().clamp_min(1e-9)


@dataclass(frozen=True)
class Validation:
    loss: float
    tokens: int
    accuracy: float = math.nan  # next-token top-1 accuracy
    loss_std: float = math.nan  # spread of the per-token losses
    metrics: dict = field(default_factory=dict)  # the task's own: accuracy, macro-F1, per class, preference accuracy...

    @property
    def perplexity(self) -> float:
        return perplexity(self.loss)


def validation_loss_with_fallback(model, blocks: TokenBlocks, batch_size: int, device: torch.device, precision: str,
                                  max_blocks: int | None = None, log=print) -> Validation:
    """Out of memory during evaluation halves the evaluation batch and starts the pass again."""
    result, _ = with_oom_backoff(lambda size: validation_loss(model, blocks, size, device, precision, max_blocks), batch_size,
                                 device, lambda size: log(f"out of memory in evaluation: retrying with evaluation batch {size}"),
                                 lambda: UserError("out of memory in evaluation at batch 1; lower train.eval_max_blocks or data.block_size"))
    return result


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    blocks: TokenBlocks | Examples,
    batch_size: int,
    device: torch.device,
    precision: str,
    max_blocks: int | None = None,
) -> Validation:
    """Mean loss over the validation targets (every next token, the assistant tokens, or the classes), with accuracy and spread.

    Class weights are left out: validation measures the plain loss.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, squared loss, correct predictions
    count = torch.zeros((), dtype=torch.float64, device=device)
    for indices in blocks.batches_by_length(batch_size, max_blocks):
        batch = blocks.batch(indices).to(device)
        batch.weights = None
        with autocast(device, precision):
            logits = forward(model, batch)
        losses, weights, correct = term_losses(logits, batch, with_correct=True)
        losses = losses.double() * weights
        sums += torch.stack([losses.sum(), (losses * losses).sum(), (correct.double() * weights).sum()])
        count += weights.sum()
    model.train(was_training)
    n = max(count.item(), 1.0)
    total, squares, correct = (value / n for value in sums.tolist())
    return Validation(loss=total, tokens=int(count.item()), accuracy=correct, loss_std=math.sqrt(max(0.0, squares - total**2)))
