"""Prepare text for training: read, clean, de-duplicate, split, tokenize and pack into token files."""

from .blocks import TokenBlocks
from .prepare import PreparedData, prepare_data, prepare_eval_data

__all__ = ["PreparedData", "TokenBlocks", "prepare_data", "prepare_eval_data"]
