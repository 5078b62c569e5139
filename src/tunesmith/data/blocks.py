"""Fixed-length token blocks over a memory-mapped token file, the unit that training and evaluation consume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..batch import IGNORE, Batch


class TokenBlocks:
    """Consecutive, non-overlapping blocks of `block_size` tokens.

    With `keep_tail`, the tokens after the last full block form one shorter block, so a small
    validation split is still measured in full; training drops the tail for equal-length batches.
    With `document_end` (the EOS id that closes each document), the documents in a block are kept
    apart: positions restart after each EOS, so the model attends within a document only, and the EOS
    is not asked to predict the next document's first token.
    """

    def __init__(self, path: Path, dtype: np.dtype, block_size: int, keep_tail: bool, document_end: int | None = None):
        self.document_end = document_end
        size = path.stat().st_size // np.dtype(dtype).itemsize if path.exists() else 0
        self.tokens = np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
        self.block_size = block_size
        full = len(self.tokens) // block_size
        self.bounds = [(i * block_size, (i + 1) * block_size) for i in range(full)]
        tail = len(self.tokens) - full * block_size
        if keep_tail and tail >= 2:
            self.bounds.append((full * block_size, len(self.tokens)))

    def __len__(self) -> int:
        return len(self.bounds)

    def length(self, index: int) -> int:
        start, end = self.bounds[index]
        return end - start

    @property
    def num_tokens(self) -> int:
        return sum(end - start for start, end in self.bounds)

    def batch(self, indices: list[int]) -> Batch:
        """A (B, T) batch where every next token is a target; the blocks must have equal length."""
        rows = [self.tokens[start:end] for start, end in (self.bounds[i] for i in indices)]
        ids = torch.from_numpy(np.stack(rows).astype(np.int64))
        return Batch(ids) if self.document_end is None else documents_apart(ids, self.document_end)

    def batches_by_length(self, batch_size: int, limit: int | None = None) -> list[list[int]]:
        """Index batches for evaluation, never mixing a short tail block with full blocks."""
        chosen = list(range(len(self)))[: limit or None]
        full = [i for i in chosen if self.bounds[i][1] - self.bounds[i][0] == self.block_size]
        short = [i for i in chosen if self.bounds[i][1] - self.bounds[i][0] != self.block_size]
        batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
        return batches + [[i] for i in short]


def documents_apart(ids: torch.Tensor, document_end: int) -> Batch:
    """A batch of joined documents with position ids restarting after each `document_end`, and no target across one."""
    index = torch.arange(ids.shape[1]).expand_as(ids)
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, :-1] == document_end
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    labels = ids.masked_fill(starts, IGNORE)
    return Batch(ids, labels, position_ids=index - first)
