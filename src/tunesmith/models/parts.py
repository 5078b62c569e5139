"""The parts of a causal LM that losses reach into: the decoder stack and the output layer."""

from __future__ import annotations

import torch

CHUNK_BYTES = 64 * 2**20  # one chunk's fp32 logits: 341 positions of a 49k vocabulary, 128 of a 128k one


def chunk_positions(vocab: int, budget: int | None = None) -> int:
    """Positions per chunk of a fused output loss, so that a chunk's fp32 logits stay within `budget` bytes (CHUNK_BYTES
    by default)."""
    return max(1, (budget or CHUNK_BYTES) // (4 * vocab))


def output_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """The decoder stack and the output layer of a plain (or LoRA-wrapped) causal LM, when the loss can be fused.

    None for what the fused loss cannot reproduce: a classification head, an output layer with a bias
    or a scaling of its own (logit soft-capping), or a model without the usual parts.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    backbone = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    config = getattr(inner, "config", None)
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or backbone is None or backbone is inner:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) or type(head) is not torch.nn.Linear:
        return None
    return backbone, head
