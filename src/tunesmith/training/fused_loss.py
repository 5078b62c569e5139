"""The training loss of a micro-batch (`training_loss`), which owns output fusion: where the model allows, the
output layer and the cross-entropy run in one pass over chunks of positions, so that the logits of a large
vocabulary are never held whole (neither in bf16 nor in fp32).

Each chunk's logits are made, turned into the loss and into the gradients of the hidden states and of the
output weight, and dropped; backward only scales the saved gradients. The arithmetic is that of
`F.linear` followed by `F.cross_entropy`: the matmuls in the autocast dtype, the softmax in fp32.
Written by hand because PyTorch has no fused linear + cross-entropy; Liger-Kernel's is Triton-only.
"""

from __future__ import annotations

import torch

from ..models.parts import chunk_positions, compute_dtype, output_parts, padded_rows, vocab_multiple
from ..tasks.loss import batch_loss, scored, target_weight

CHUNK_BYTES = 64 * 2**20  # one chunk's fp32 logits: 341 positions of a 49k vocabulary, 128 of a 128k one


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(hidden_i @ weight.T, target_i) / sum_i w_i, with gradients for hidden and weight."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, label_smoothing: float, matmul_dtype, multiple: int = 1):
        total_weight = weights.sum().clamp_min(1e-9)
        grad_hidden = torch.empty_like(hidden)
        want_weight = weight.requires_grad  # a frozen output layer (freeze, LoRA) needs no weight gradient
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        vocab = weight.shape[0]
        w_matmul = padded_rows(weight.to(matmul_dtype), multiple)  # no copy where it is already in the dtype and aligned
        size = chunk_positions(w_matmul.shape[0], CHUNK_BYTES)
        for start in range(0, hidden.shape[0], size):
            h = hidden[start : start + size].to(matmul_dtype)
            t, w = targets[start : start + size], weights[start : start + size]
            logits = (h @ w_matmul.T).float()
            logits[:, vocab:] = float("-inf")  # the padding rows: probability 0, gradient 0
            logprobs = logits.log_softmax(-1)
            picked = logprobs.gather(1, t[:, None]).squeeze(1)
            per_token = -(1 - label_smoothing) * picked - label_smoothing * logprobs[:, :vocab].mean(-1)
            loss += (per_token * w).sum() / total_weight
            grad = logprobs.exp_()  # softmax, reusing the buffer
            grad.scatter_add_(1, t[:, None], torch.full_like(t[:, None], -(1 - label_smoothing), dtype=grad.dtype))
            if label_smoothing:
                grad[:, :vocab] -= label_smoothing / vocab
            chunk_weight = w.sum().clamp_min(1e-9)
            grad *= w[:, None] / chunk_weight  # a mean over the chunk in low precision (fp16 neither underflows nor overflows),
            grad_low = grad.to(matmul_dtype)  # then its share of the whole in fp32
            share = chunk_weight / total_weight
            grad_hidden[start : start + size] = ((grad_low @ w_matmul).float() * share).to(hidden.dtype)
            if want_weight:
                grad_weight += (grad_low.T @ h)[:vocab].float() * share
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if want_weight else None)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, None if grad_weight is None else grad_weight * grad_output, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                         label_smoothing: float = 0.0, multiple: int | None = None) -> torch.Tensor:
    """The weighted mean cross-entropy of `hidden` (N, H) through the output `weight` (V, H) against `targets` (N,);
    `multiple`: the output rows are padded to a multiple of it for the matmuls (default: the device's `vocab_multiple`)."""
    if weights is None:
        weights = torch.ones(targets.shape, dtype=torch.float32, device=targets.device)
    with torch.autocast(hidden.device.type, enabled=False):
        return LinearCrossEntropy.apply(hidden, weight, targets, weights.float(), label_smoothing, compute_dtype(hidden, weight),
                                        multiple or vocab_multiple(hidden.device))


class ModelLoss:
    """The loss through the model's own output layer: its logits, then `loss.batch_loss`."""

    def __init__(self, module: torch.nn.Module, label_smoothing: float = 0.0):
        self.module, self.label_smoothing = module, label_smoothing

    def __call__(self, batch) -> torch.Tensor:
        return batch_loss(self.module, batch, self.label_smoothing)

    @staticmethod
    def weight(batch) -> float:
        return target_weight(batch)

    def compiled(self) -> "ModelLoss":
        return ModelLoss(torch.compile(self.module), self.label_smoothing)


class FusedOutputLoss:
    """A causal LM trained through its decoder stack, with the output layer folded into the loss."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Linear, label_smoothing: float = 0.0):
        self.backbone, self.head, self.label_smoothing = backbone, head, label_smoothing

    @property
    def module(self) -> torch.nn.Module:
        return self.backbone

    @staticmethod
    def weight(batch) -> float:
        return target_weight(batch)

    def compiled(self) -> "FusedOutputLoss":
        return FusedOutputLoss(torch.compile(self.backbone), self.head, self.label_smoothing)

    def __call__(self, batch) -> torch.Tensor:
        hidden, targets, weights = scored(self.backbone(**batch.model_inputs(), use_cache=False).last_hidden_state, batch)
        return linear_cross_entropy(hidden, self.head.weight, targets, weights, self.label_smoothing)


def training_loss(model: torch.nn.Module, fuse: bool, label_smoothing: float = 0.0) -> ModelLoss | FusedOutputLoss:
    """The loss a step calls on each micro-batch, `loss(batch)`: with the output layer fused in where asked and the
    model allows it (see `output_parts`), else through the model's logits. `module` is what runs forward."""
    parts = output_parts(model) if fuse else None
    return FusedOutputLoss(*parts, label_smoothing) if parts else ModelLoss(model, label_smoothing)
