"""Training: the loop, its optimizer and schedule, precision, checkpoints and the validation pass."""

from .loop import train_run

__all__ = ["train_run"]
