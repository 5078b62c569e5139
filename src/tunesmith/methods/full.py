"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from .base import Method


class Full(Method):
    name = "full"
    advice = {
        "overfitting": (("model.method", "lora", "far fewer trainable parameters memorize less (or freeze)"),),
        "too_little_data": (("model.method", "lora", "train far fewer parameters"),),
        "forgetting": (("model.method", "lora", "low-rank adapters leave the base weights as they are"),
                       ("model.method", "freeze", "train only the top blocks (with model.train_last_layers)")),
    }
