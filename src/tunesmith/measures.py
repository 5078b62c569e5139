"""Figures every stage reports alike, written once here, with no torch import: diagnosis reads them from finished
runs without loading it."""

from __future__ import annotations

import math

LOG_CAP = 700.0  # exp(709) is about the largest a float holds


def perplexity(loss: float) -> float:
    """exp of a mean loss in nats per token, capped so that a diverged loss does not overflow."""
    return math.exp(min(loss, LOG_CAP))


def perplexity_ratio(loss_change: float) -> float:
    """How many times a perplexity grows when its loss grows by `loss_change` nats per token (capped alike)."""
    return math.exp(max(min(loss_change, LOG_CAP), -LOG_CAP))
