"""A loss through the output layer over chunks of positions: each chunk's logits are made, scored, differentiated and
dropped, so that neither the student's nor the teacher's logits over a large vocabulary are ever held whole.

`training.fused_loss` does this for plain cross-entropy with hand-written gradients; a distillation loss mixes that
cross-entropy with one of three divergences, over the whole vocabulary or the teacher's top k, so each chunk is
differentiated by autograd on the spot (a graph over that chunk alone). Besides the memory, it is faster: the
vocabulary-wide passes of the softmaxes and divergences over a chunk of positions cost less than over all of them
at once (benchmarks/RESULTS.md, distillation).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..models.parts import chunk_positions

CHUNK_BYTES = 32 * 2**20  # one chunk's fp32 logits: 170 positions of a 49k vocabulary (the fastest on a CPU against 8-64 MiB); its graph holds a few such


class ChunkedOutputLoss(torch.autograd.Function):
    """sum_i w_i * score(hidden_i @ weight.T)_i / sum_i w_i, with gradients for hidden and (when it trains) weight."""

    @staticmethod
    def forward(ctx, hidden, weight, weights, score: Callable, compute_dtype):
        total_weight = weights.sum().clamp_min(1e-9)
        want_weight = weight.requires_grad  # a frozen output layer (freeze, LoRA) needs no weight gradient
        w_matmul = weight.detach().to(compute_dtype).requires_grad_(want_weight)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        size = chunk_positions(weight.shape[0], CHUNK_BYTES)
        for start in range(0, hidden.shape[0], size):
            end = min(start + size, hidden.shape[0])
            h = hidden[start:end].detach().to(compute_dtype).requires_grad_()
            with torch.enable_grad():
                logits = (h @ w_matmul.T).float()
                chunk_loss = (score(logits, start, end) * (weights[start:end] / total_weight)).sum()
            grads = torch.autograd.grad(chunk_loss, [h, w_matmul] if want_weight else [h])
            grad_hidden[start:end] = grads[0].to(hidden.dtype)
            if want_weight:
                grad_weight += grads[1].float()
            loss += chunk_loss.detach()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if want_weight else None)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, None if grad_weight is None else grad_weight * grad_output, None, None, None


def chunked_output_loss(hidden: torch.Tensor, weight: torch.Tensor, weights: torch.Tensor, score: Callable) -> torch.Tensor:
    """The weighted mean of `score(logits, start, end)`, the per-position losses of the chunk of positions start:end,
    whose fp32 logits are `hidden[start:end] @ weight.T` (the matmul in the autocast dtype, as the model's own)."""
    device = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    with torch.autocast(device, enabled=False):
        return ChunkedOutputLoss.apply(hidden, weight, weights.float(), score, compute_dtype)
