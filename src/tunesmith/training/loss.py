"""Next-token cross-entropy over packed blocks, and the validation pass built on it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import TokenBlocks
from .hardware import autocast


def next_token_loss(model: torch.nn.Module, tokens: torch.Tensor, reduction: str = "mean", label_smoothing: float = 0.0,
                    logits: torch.Tensor | None = None) -> torch.Tensor:
    """Each position predicts the next token of the same block; the loss is computed in fp32."""
    if logits is None:
        logits = model(input_ids=tokens, use_cache=False).logits  # (B, T, vocab)
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        tokens[:, 1:].flatten(),
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # capped: a diverged loss must not overflow the log


@dataclass(frozen=True)
class Validation:
    loss: float
    tokens: int
    accuracy: float = math.nan  # next-token top-1 accuracy
    loss_std: float = math.nan  # spread of the per-token losses

    @property
    def perplexity(self) -> float:
        return perplexity(self.loss)

    @property
    def standard_error(self) -> float:
        """Standard error of the mean loss, treating tokens as independent (so a lower bound)."""
        return self.loss_std / math.sqrt(max(self.tokens, 1))


def validation_loss_with_fallback(model, blocks: TokenBlocks, batch_size: int, device: torch.device, precision: str,
                                  max_blocks: int | None = None, log=print) -> Validation:
    """Out of memory during evaluation halves the evaluation batch and starts the pass again."""
    from .step import free_memory, is_out_of_memory

    while True:
        try:
            return validation_loss(model, blocks, batch_size, device, precision, max_blocks)
        except Exception as exc:
            if not is_out_of_memory(exc) or batch_size == 1:
                raise
            free_memory(device)
            batch_size //= 2
            log(f"out of memory in evaluation: retrying with evaluation batch {batch_size}")


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    blocks: TokenBlocks,
    batch_size: int,
    device: torch.device,
    precision: str,
    max_blocks: int | None = None,
) -> Validation:
    """Token-weighted mean loss over the validation blocks (a shorter tail block included), with accuracy and spread."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, squared loss, correct predictions
    count = 0
    for indices in blocks.batches_by_length(batch_size, max_blocks):
        tokens = blocks.batch(indices).to(device, non_blocking=True)  # (B, T)
        with autocast(device, precision):
            logits = model(input_ids=tokens, use_cache=False).logits  # (B, T, vocab)
        losses = next_token_loss(model, tokens, reduction="none", logits=logits).double()
        correct = (logits[:, :-1].argmax(-1) == tokens[:, 1:]).sum()
        sums += torch.stack([losses.sum(), (losses**2).sum(), correct.double()])
        count += tokens[:, 1:].numel()
    model.train(was_training)
    total, squares, correct = (value / max(count, 1) for value in sums.tolist())
    return Validation(loss=total, tokens=count, accuracy=correct, loss_std=math.sqrt(max(0.0, squares - total**2)))
