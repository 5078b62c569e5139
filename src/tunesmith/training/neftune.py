"""NEFTune (Jain et al., 2023): uniform noise on the input embeddings while training on instructions.

The noise of each row is uniform in ±alpha / sqrt(L * d), L the row's length and d the embedding width,
as in the paper and in transformers' Trainer; evaluation and generation (eval mode) see none.
"""

from __future__ import annotations

import math

import torch


def add_embedding_noise(model: torch.nn.Module, alpha: float):
    """Register the noise on the model's input embeddings; returns the hook's handle (remove() takes it off)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    embeddings = inner.get_input_embeddings()

    def noisy(module: torch.nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        scale = alpha / math.sqrt(output.size(1) * output.size(2))
        return output + torch.empty_like(output).uniform_(-scale, scale)

    return embeddings.register_forward_hook(noisy)
