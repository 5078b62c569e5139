"""Which weights train: all of them (`full`) or all but the embeddings and the lowest blocks (`freeze`)."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..errors import ConfigError


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of decoder blocks: the longest ModuleList (GPT-2's `h`, Llama's `layers`, ...)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ConfigError(["model.method: freeze needs a model with a stack of blocks; use method full"])
    return max(lists, key=len)


def apply_method(model: torch.nn.Module, cfg: ModelConfig) -> tuple[int, int]:
    """Set requires_grad per the method; return (trainable, total) parameter counts."""
    if cfg.method == "freeze":
        blocks = transformer_blocks(model)
        if cfg.freeze_layers >= len(blocks):
            raise ConfigError([f"model.freeze_layers: {cfg.freeze_layers} leaves nothing to train; the model has {len(blocks)} blocks, use at most {len(blocks) - 1}"])
        model.get_input_embeddings().requires_grad_(False)
        for block in blocks[: cfg.freeze_layers]:
            block.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
