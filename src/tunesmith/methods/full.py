"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from ..findings import Advice
from .base import Method


class Full(Method):
    name = "full"
    advice = {
        "overfitting": (Advice("model.method", "lora", "far fewer trainable parameters memorize less (or freeze)"),),
        "too_little_data": (Advice("model.method", "lora", "train far fewer parameters"),),
        "forgetting": (Advice("model.method", "lora", "low-rank adapters leave the base weights as they are"),
                       Advice("model.method", "freeze", "train only the top blocks (with model.train_last_layers)")),
    }
