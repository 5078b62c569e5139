"""Layer freezing: the top blocks train (and an untied output layer with them); the embeddings and the bottom stay."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method


class Freeze(Method):
    name = "freeze"
    learning_rate = 1e-4
    trains_all = False
    top_blocks = True
    fallback = True
    settings = ("model.freeze_layers", "model.train_last_layers")
    reads = settings
    advice = {"underfitting": (("model.freeze_layers", 0, "unfreeze layers so more of the model adapts"),)}

    def prepare(self, model, cfg):
        import torch

        from ..models.weights import transformer_blocks

        blocks = transformer_blocks(model)
        frozen = len(blocks) - cfg.train_last_layers if cfg.train_last_layers else cfg.freeze_layers
        if frozen >= len(blocks) or frozen < 0:
            raise ConfigError([f"model.freeze_layers/train_last_layers: the model has {len(blocks)} blocks; "
                               f"freeze at most {len(blocks) - 1} and train at least 1"])
        for module in model.modules():  # the token embeddings, and learned positions where the model has them (GPT-2's wpe)
            if isinstance(module, torch.nn.Embedding):
                module.requires_grad_(False)
        for block in blocks[:frozen]:
            block.requires_grad_(False)
        output = model.get_output_embeddings()
        if output is not None and output.weight is not model.get_input_embeddings().weight:
            output.requires_grad_(True)  # an untied head trains with the top blocks
        return model

    def cost_per_parameter(self, device: str, trainable_share: float) -> float:
        return 2.0 + 4.0 * trainable_share  # backward runs through the trained top only

    def default_trained_layers(self, config) -> int | None:
        return max(1, config.num_hidden_layers // 4)  # the top quarter of the blocks, at least one

    def trained_layers(self, cfg, config) -> int | None:
        return cfg.train_last_layers or max(1, config.num_hidden_layers - cfg.freeze_layers)
