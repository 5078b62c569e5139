"""A loss through the output layer over chunks of positions: each chunk's logits are made, scored, differentiated and
dropped, so that neither the student's nor the teacher's logits over a large vocabulary are ever held whole.

`training.fused_loss` does this for plain cross-entropy with hand-written gradients; a distillation loss mixes that
cross-entropy with one of three divergences, over the whole vocabulary or the teacher's top k, so each chunk is
differentiated by autograd on the spot (a graph over that chunk alone). Besides the memory, it is faster on a CPU:
the vocabulary-wide passes of the softmaxes and divergences cost less over a chunk of positions than over all of them
at once (benchmarks/RESULTS.md, distillation).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..models.parts import chunk_positions, compute_dtype, padded_rows, vocab_multiple

CHUNK_BYTES = 32 * 2**20  # one chunk's fp32 logits (170 positions of a 49k vocabulary): on a 2-core CPU the fastest of
                          # 8-64 MiB or close to it; its graph holds a few tensors of that size


class ChunkedOutputLoss(torch.autograd.Function):
    """sum_i w_i * score(hidden_i @ weight.T)_i / sum_i w_i, with gradients for hidden and (when it trains) weight."""

    @staticmethod
    def forward(ctx, hidden, weight, position_weights, score: Callable, matmul_dtype, multiple: int):
        total_weight = position_weights.sum().clamp_min(1e-9)
        vocab = weight.shape[0]
        want_weight = weight.requires_grad  # a frozen output layer (freeze, LoRA) needs no weight gradient
        w_matmul = padded_rows(weight.detach().to(matmul_dtype), multiple).requires_grad_(want_weight)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        size = chunk_positions(w_matmul.shape[0], CHUNK_BYTES)
        for start in range(0, hidden.shape[0], size):
            end = min(start + size, hidden.shape[0])
            h = hidden[start:end].detach().to(matmul_dtype).requires_grad_()
            weights = position_weights[start:end]
            chunk_weight = weights.sum().clamp_min(1e-9)
            with torch.enable_grad():
                logits = (h @ w_matmul.T)[:, :vocab].float()
                # the chunk's mean is differentiated in low precision (fp16 neither underflows nor overflows), then
                # weighed by its share of the whole in fp32
                chunk_mean = (score(logits, start, end) * weights).sum() / chunk_weight
            grads = torch.autograd.grad(chunk_mean, [h, w_matmul] if want_weight else [h])
            share = chunk_weight / total_weight
            grad_hidden[start:end] = (grads[0].float() * share).to(hidden.dtype)
            if want_weight:
                grad_weight += grads[1][:vocab].float() * share
            loss += chunk_mean.detach() * share
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if want_weight else None)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, None if grad_weight is None else grad_weight * grad_output, None, None, None, None


def chunked_output_loss(hidden: torch.Tensor, weight: torch.Tensor, position_weights: torch.Tensor, score: Callable,
                        multiple: int | None = None) -> torch.Tensor:
    """The weighted mean of `score(logits, start, end)`, the losses of the positions start:end, whose fp32 logits are
    `hidden[start:end] @ weight.T` (the matmul in the autocast dtype, as the model's own; the output rows padded to a
    multiple of `multiple` for it, by default the device's `vocab_multiple`)."""
    dtype = compute_dtype(hidden, weight)
    with torch.autocast(hidden.device.type, enabled=False):
        return ChunkedOutputLoss.apply(hidden, weight, position_weights.float(), score, dtype,
                                       multiple or vocab_multiple(hidden.device))
