"""One optimizer step: micro-batches, gradient accumulation, clipping, and the out-of-memory ladder.

On out-of-memory the step is retried from scratch with half the micro-batch (and so twice the
accumulation): the same blocks, the same loss weighting, the same update.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..batch import Batch
from ..data import TokenBlocks
from ..errors import UserError, is_out_of_memory
from ..runtime import autocast, free_memory, with_oom_backoff
from .distributed import Distributed, full_tensor, no_sync
from .fused_loss import FusedOutputLoss, ModelLoss

Loss = ModelLoss | FusedOutputLoss  # or a task's own loss: callable on a batch, with weight(batch), module and compiled()

OOM_ADVICE = ("set model.gradient_checkpointing=true, use model.method=lora, lower data.block_size, "
              "or pick a smaller model")


def forward_backward(loss: Loss, batch: Batch, weight: float, scaler, device, precision: str) -> torch.Tensor:
    """Loss of one micro-batch, scaled by its share of the step, with its gradients accumulated."""
    with autocast(device, precision):
        value = loss(batch) * weight
    (scaler.scale(value) if scaler else value).backward()
    return value.detach()


class StepRunner:
    """Runs `loss` (see `fused_loss.training_loss`) over a step's micro-batches and applies the update."""

    def __init__(self, model, loss: Loss, optimizer, scheduler, scaler, device, precision: str, micro_batch_size: int,
                 grad_clip: float | None, log: Callable[[str], None], context: Distributed = Distributed()):
        self.model, self.loss, self.optimizer, self.scheduler, self.scaler = model, loss, optimizer, scheduler, scaler
        self.device, self.precision = device, precision
        self.micro_batch_size = micro_batch_size
        self.grad_clip = grad_clip
        self.log = log
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.context = context
        self.eager_loss = None  # the uncompiled loss, to fall back to if compilation fails

    def compile(self) -> None:
        """torch.compile the forward pass; if compilation fails at the first step, fall back to eager with a message."""
        self.eager_loss, self.loss = self.loss, self.loss.compiled()

    def _accumulate(self, dataset: TokenBlocks, indices: list[int]) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        chunks = [indices[i : i + self.micro_batch_size] for i in range(0, len(indices), self.micro_batch_size)]
        batches = [dataset.batch(chunk) for chunk in chunks]
        shares = [self.loss.weight(batch) for batch in batches]  # each micro-batch weighs by its targets (or pairs): the step is their mean
        whole = sum(shares) or 1.0
        for number, (batch, share) in enumerate(zip(batches, shares)):
            with no_sync(self.loss.module, last_micro_batch=number == len(chunks) - 1):
                total += forward_backward(self.loss, batch.to(self.device), share / whole, self.scaler, self.device, self.precision)
        return total

    def _accumulate_with_backoff(self, dataset: TokenBlocks, indices: list[int]) -> torch.Tensor:
        def attempt(size: int) -> torch.Tensor:
            self.micro_batch_size = size
            return self._accumulate(dataset, indices)

        def retrying(size: int) -> None:
            self.log(f"out of memory: retrying the step with micro-batch {size} and twice the accumulation (same effective batch)")

        total, _ = with_oom_backoff(attempt, self.micro_batch_size, self.device, retrying, lambda: out_of_memory(dataset),
                                    cleanup=lambda: self._restart(dataset))
        return total

    def _restart(self, dataset) -> None:
        """Before a step is tried again: no gradient, and nothing a dataset that reports on its step (GRPO's) counted."""
        self.optimizer.zero_grad(set_to_none=True)
        if hasattr(dataset, "restart_step"):
            dataset.restart_step()

    def run(self, dataset: TokenBlocks, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step over `indices`; the mean loss, whether the update was applied, and the gradient norm, on the device."""
        try:
            total = self._accumulate_with_backoff(dataset, indices)
        except Exception as exc:
            if self.eager_loss is None or is_out_of_memory(exc) or isinstance(exc, UserError):
                raise
            self.log(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); training without it")
            self.loss, self.eager_loss = self.eager_loss, None
            self.optimizer.zero_grad(set_to_none=True)
            total = self._accumulate_with_backoff(dataset, indices)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        total = self.context.mean(total)  # the global loss: the same value, and the same skip decision, on every rank
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip or math.inf))
        finite = torch.isfinite(total) & torch.isfinite(grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = (~finite).float()  # the fused kernel skips the update on the device: no host sync
            self.optimizer.step()
        elif finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total, finite, grad_norm


def out_of_memory(dataset: TokenBlocks) -> UserError:
    return UserError(f"out of memory at micro-batch 1 (block size {dataset.block_size}); {OOM_ADVICE}")


def largest_micro_batch(model, loss: Loss, dataset: TokenBlocks, device: torch.device, precision: str, limit: int, log) -> int:
    """The largest power-of-two micro-batch up to `limit` that runs a step on the longest rows without out-of-memory."""
    if device.type == "cpu":
        log("train.micro_batch_size auto: 4 on CPU (memory does not limit it there)")
        return min(4, limit)
    longest = sorted(range(len(dataset)), key=dataset.length, reverse=True)  # the worst case for memory

    def attempt(size: int) -> None:
        try:
            forward_backward(loss, dataset.batch(longest[:size]).to(device), 1.0, None, device, precision)
        finally:
            model.zero_grad(set_to_none=True)

    _, best = with_oom_backoff(attempt, 1 << (limit.bit_length() - 1), device, lambda _size: None, lambda: out_of_memory(dataset))
    free_memory(device)
    log(f"train.micro_batch_size auto: {best}")
    return best
