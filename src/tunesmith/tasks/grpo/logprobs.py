"""Each position's log-probability of its token, log softmax(logits / temperature)[token] in fp32, computed in slices of
rows small enough for the allocator to reuse.

The plain expression (`logits.float()`, `logsumexp`, `gather`) makes fp32 copies of the whole (rows, positions,
vocabulary) tensor forward and backward: 200 MB each for GRPO's 32 completions of 32 tokens with a 49k vocabulary.
On a CPU, blocks that large are fresh pages from the kernel every time, and faulting them in costs more than the
arithmetic. Here the forward keeps one log-sum-exp per position, and the backward writes the gradient of the logits
slice by slice into one tensor of the logits' own dtype. PyTorch has no fused selected-log-softmax.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

SLICE_BYTES = 16 * 2**20  # fp32 bytes of one slice, below glibc's largest mmap threshold (32 MB), so freed blocks are reused
# (a slice is at least one row: a row of more positions x vocabulary than that is a slice of its own)


def _slices(logits: torch.Tensor, width: int) -> range:
    rows = max(1, SLICE_BYTES // (width * logits.shape[-1] * 4))
    return range(0, logits.shape[0], rows)


def _scaled(logits: torch.Tensor, start: int, end: int, width: int, temperature: float) -> torch.Tensor:
    """Rows start:end of the scored positions as a new fp32 tensor (never the saved logits themselves), over temperature."""
    part = logits[start:end, :width].to(torch.float32, copy=True)
    return part.div_(temperature) if temperature != 1.0 else part


class TokenLogprobs(torch.autograd.Function):
    """(B, T, V) logits, of which the first `width` positions are scored, and (B, width) tokens -> (B, width) fp32."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor, width: int, temperature: float) -> torch.Tensor:
        rows = _slices(logits, width)
        picked = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
        norms = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
        for start in rows:
            part = _scaled(logits, start, start + rows.step, width, temperature)
            norms[start : start + rows.step] = part.logsumexp(-1)
            picked[start : start + rows.step] = part.gather(-1, tokens[start : start + rows.step, :, None]).squeeze(-1)
        ctx.save_for_backward(logits, tokens, norms)
        ctx.width, ctx.temperature = width, temperature
        return picked - norms

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logits, tokens, norms = ctx.saved_tensors
        width, temperature = ctx.width, ctx.temperature
        rows = _slices(logits, width)
        grad_logits = torch.zeros_like(logits)
        for start in rows:
            end = start + rows.step
            g = grad[start:end, :, None] / temperature
            part = _scaled(logits, start, end, width, temperature)
            part.sub_(norms[start:end, :, None]).exp_().mul_(-g)  # d/dlogits of log p(token) = onehot - softmax
            part.scatter_add_(-1, tokens[start:end, :, None], g)
            grad_logits[start:end, :width] = part
        return grad_logits, None, None, None


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits[:, :W] / temperature)[tokens] for (B, T >= W, V) logits and (B, W) tokens, as (B, W) fp32."""
    if not tokens.shape[1]:
        return logits[:, :0, 0].float()
    return TokenLogprobs.apply(logits, tokens, tokens.shape[1], float(temperature))
