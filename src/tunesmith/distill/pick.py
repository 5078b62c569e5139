"""Which of the teacher's blocks a student keeps, measured on the training data: the run of consecutive blocks whose
removal changes the hidden state least (Gromov et al., 2024, "The Unreasonable Ineffectiveness of the Deeper Layers";
ShortGPT's block influence is the one-block case).

For `drop` blocks to remove, every start l is scored by the angular distance arccos(cos(x_l, x_{l+drop})) / pi between
the hidden state entering block l and the one entering block l + drop, averaged over real tokens; the run with the
smallest distance goes, since the blocks after it then receive what they would have received anyway. Evenly spaced
blocks remove neighbours everywhere, including from the first and last few blocks, whose changes are the largest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models import ResolvedModel, load_model
from ..models.weights import transformer_blocks
from ..runtime import autocast, low_precision_dtype
from ..tasks.loss import forward

CALIBRATION_ROWS = 64  # training rows the distances are averaged over: enough for a stable ranking, seconds to run
TOKENS_PER_PASS = 2048  # rows per forward are bounded by their tokens: every block's hidden state is held at once


@dataclass(frozen=True)
class Pick:
    """The blocks a measured student keeps, and what the measure found for the run it removes."""

    kept: list[int]
    distance: float  # the removed run's angular distance, from 0 (no change) to 1 (opposite)
    tokens: int  # real tokens it was averaged over

    def describe(self, total: int) -> str:
        dropped = [i for i in range(total) if i not in self.kept]
        return (f"student: removing the teacher's blocks {dropped[0]} to {dropped[-1]}, the run of {len(dropped)} whose input and "
                f"output differ least on {self.tokens:,} training tokens (angular distance {self.distance:.3f})")


class _PastTheLastBlock(Exception):
    """Raised by the hook on the last block: what comes after it (the output layer over the vocabulary) is not needed."""


class BlockStates:
    """The hidden states entering each block and leaving the last, caught by hooks; the forward stops there."""

    def __init__(self, model: torch.nn.Module):
        self.blocks = transformer_blocks(model)
        self.states: list[torch.Tensor | None] = [None] * (len(self.blocks) + 1)
        self.handles = [block.register_forward_pre_hook(self._entering(i), with_kwargs=True) for i, block in enumerate(self.blocks)]
        self.handles.append(self.blocks[-1].register_forward_hook(self._leaving))

    def _entering(self, index: int):
        def catch(_module, args, kwargs) -> None:
            self.states[index] = args[0] if args else kwargs["hidden_states"]
        return catch

    def _leaving(self, _module, _args, output) -> None:
        self.states[-1] = output[0] if isinstance(output, (tuple, list)) else output
        raise _PastTheLastBlock

    def read(self, module: torch.nn.Module, batch) -> list[torch.Tensor]:
        """The states of one batch, forgotten here once returned."""
        try:
            forward(module, batch)
        except _PastTheLastBlock:
            pass
        states, self.states = self.states, [None] * (len(self.blocks) + 1)
        return states

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def calibration_rows(count: int) -> list[int]:
    """Up to CALIBRATION_ROWS row indices spread evenly over the dataset, so the measure reads all of it, not its start."""
    if count <= CALIBRATION_ROWS:
        return list(range(count))
    return sorted({round(i * (count - 1) / (CALIBRATION_ROWS - 1)) for i in range(CALIBRATION_ROWS)})


@torch.no_grad()
def least_change_run(module: torch.nn.Module, model: torch.nn.Module, dataset, keep: int, device: torch.device,
                     precision: str) -> Pick:
    """The teacher's blocks to keep when `keep` of them stay: all but the consecutive run whose removal changes the
    hidden state least on `dataset`'s rows (read by `module`, the teacher or the task's wrapper of it)."""
    states = BlockStates(model)
    total = len(states.blocks)
    drop = total - keep
    sums, tokens = torch.zeros(keep + 1, dtype=torch.float64), 0
    rows = calibration_rows(len(dataset))
    per_pass = max(1, TOKENS_PER_PASS // max(1, dataset.batch(rows[:1]).input_ids.shape[1]))
    try:
        for start in range(0, len(rows), per_pass):
            batch = dataset.batch(rows[start : start + per_pass]).to(device)
            with autocast(device, precision):
                caught = states.read(module, batch)
            real = batch.real_tokens()
            mask = torch.ones(batch.input_ids.shape, dtype=torch.bool, device=device) if real is None else real.bool()
            for first in range(keep + 1):  # removing blocks first .. first + drop - 1
                cosine = torch.nn.functional.cosine_similarity(caught[first][mask].float(), caught[first + drop][mask].float(),
                                                               dim=-1, eps=1e-6)
                sums[first] += (torch.arccos(cosine.clamp(-1, 1)) / math.pi).sum().item()
            tokens += int(mask.sum())
    finally:
        states.remove()
    distances = sums / max(tokens, 1)
    first = int(torch.argmin(distances))
    return Pick([i for i in range(total) if not first <= i < first + drop], float(distances[first]), tokens)


def measure_pick(teacher: ResolvedModel, keep: int, dataset, wrap, classifier: bool, device: torch.device, precision: str) -> Pick:
    """Which `keep` of the teacher's blocks a student keeps, measured on `dataset` (read through `wrap`, the task's
    training module) by the teacher loaded for this alone and let go after."""
    model = load_model(teacher, dtype=low_precision_dtype(precision), classifier=classifier).to(device).eval().requires_grad_(False)
    return least_change_run(wrap(model), model, dataset, keep, device, precision)


__all__ = ["Pick", "least_change_run", "measure_pick"]
