"""Preference examples as training items: a chosen and a rejected answer side by side, or single judged answers.

The stored examples (`Examples`, one per answer, the loss mask on the answer) are grouped into items:
for DPO and ORPO each item is a pair (two rows of a batch, chosen first); for KTO each answer is an item,
and the batch also holds one KL row per item: the item's prompt with the answer of the next item in the
stored order, the mismatched pairs from which KTO estimates how far the model has moved from the
reference. The pairing is fixed, so the reference log-probabilities of those rows can be computed once too.
"""

from __future__ import annotations

import numpy as np
import torch

from ..batch import Batch
from .examples import Examples, padded_rows
from .preferences import CHOSEN, DESIRABLE, KL_ROW, REJECTED


class PreferenceExamples:
    def __init__(self, examples: Examples, paired: bool, reference: dict | None = None):
        self.examples, self.paired = examples, paired
        codes = examples.classes
        if paired:
            starts = np.flatnonzero(codes[:-1] == CHOSEN) if len(codes) > 1 else np.zeros(0, dtype=np.int64)
            self.items = [[int(i), int(i) + 1] for i in starts if codes[i + 1] == REJECTED]
        else:
            self.items = [[i] for i in range(len(examples))]
        self.reference = reference  # {"rows": (examples,), "kl": (items,)} reference log-probs, when computed
        self._answers = [self._answer_start(i) for i in range(len(examples))]
        lengths = [examples.length(i) for i in range(len(examples))]
        self._lengths = [sum(lengths[r] for r in rows) + (0 if paired else self._kl_length(k)) for k, rows in enumerate(self.items)]
        self.block_size = max((lengths[r] for rows in self.items for r in rows), default=0)

    def __len__(self) -> int:
        return len(self.items)

    def length(self, index: int) -> int:
        return self._lengths[index]

    @property
    def num_tokens(self) -> int:
        """Answer tokens (those that carry the log-probability) over the items."""
        return int(sum(self.examples.target_mask(r).sum() for rows in self.items for r in rows))

    @property
    def codes(self) -> np.ndarray:
        return self.examples.classes

    def _answer_start(self, example: int) -> int:
        mask = self.examples.target_mask(example)
        return int(np.argmax(mask)) if mask.any() else len(mask)

    def kl_partner(self, index: int) -> int:
        return self.items[(index + 1) % len(self.items)][0]

    def _kl_row(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        own, other = self.items[index][0], self.kl_partner(index)
        prompt = self.examples.ids(own)[: self._answers[own]]
        answer = self.examples.ids(other)[self._answers[other] :]
        mask = self.examples.target_mask(other)[self._answers[other] :]
        room = max(self.examples.block_size, len(prompt) + 1)
        return np.r_[prompt, answer][:room], np.r_[np.zeros(len(prompt), dtype=bool), mask][:room]

    def _kl_length(self, index: int) -> int:
        own, other = self.items[index][0], self.kl_partner(index)
        return min(self._answers[own] + self.examples.length(other) - self._answers[other], max(self.examples.block_size, self._answers[own] + 1))

    def rows(self, indices: list[int]) -> list[tuple[str, int]]:
        """What each row of `batch(indices)` is: ("example", stored index) or ("kl", item index)."""
        rows = [("example", r) for k in indices for r in self.items[k]]
        return rows if self.paired else rows + [("kl", k) for k in indices]

    def batch(self, indices: list[int]) -> Batch:
        rows = self.rows(indices)
        pieces = [(self.examples.ids(i), self.examples.target_mask(i)) if kind == "example" else self._kl_row(i) for kind, i in rows]
        input_ids, labels, attention = padded_rows(pieces, self.examples.pad_id)
        codes = [int(self.codes[i]) if kind == "example" else KL_ROW for kind, i in rows]
        reference = None
        if self.reference is not None:
            reference = torch.tensor([self.reference["rows"][i] if kind == "example" else self.reference["kl"][i] for kind, i in rows],
                                     dtype=torch.float32)
        return Batch(torch.from_numpy(input_ids), torch.from_numpy(labels), torch.from_numpy(attention),
                     preference=torch.tensor(codes), reference=reference)

    def batches_by_length(self, batch_size: int, limit: int | None = None) -> list[list[int]]:
        chosen = sorted(range(len(self))[: limit or None], key=self.length)
        return [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]

    def prompt_ids(self, index: int) -> np.ndarray:
        return self.examples.prompt_ids(self.items[index][0])

    def reference_pair(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The prompt and the preferred answer (chosen, or a thumbs-up); None for an item whose answer was disliked."""
        row = self.items[index][0]
        return self.examples.reference_pair(row) if self.codes[row] in (CHOSEN, DESIRABLE) else None

