"""How many steps a run takes and which blocks each step reads.

The order is a function of (seed, epoch) only, so the data position after a resume follows from the
step number alone: no iterator state to save, and exact resume across epoch boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class StepPlan:
    num_blocks: int
    micro_batch_size: int
    grad_accum: int
    epochs: float
    max_steps: int | None
    seed: int
    world_size: int = 1
    rank: int = 0
    lengths: list[int] | None = None  # variable-length examples: steps are grouped by length, so little is padding
    repeats: int = 1  # consecutive steps that read the same blocks (GRPO's iterations on one batch of completions)
    _orders: dict[int, list[int]] = field(default_factory=dict, repr=False)

    @property
    def blocks_per_rank(self) -> int:
        return self.micro_batch_size * self.grad_accum

    @property
    def blocks_per_step(self) -> int:
        """The global batch: every rank's micro-batches times accumulation."""
        return self.blocks_per_rank * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        """A single process keeps a last, smaller batch; several drop it, so every rank gets equal shares."""
        if self.world_size > 1:
            return max(1, self.num_blocks // self.blocks_per_step)
        return max(1, math.ceil(self.num_blocks / self.blocks_per_step))

    @property
    def steps_per_epoch(self) -> int:
        return self.batches_per_epoch * self.repeats

    @property
    def total_steps(self) -> int:
        by_epochs = max(1, math.ceil(self.epochs * self.steps_per_epoch))
        return min(by_epochs, self.max_steps) if self.max_steps else by_epochs

    def ends_by(self) -> str:
        by_epochs = max(1, math.ceil(self.epochs * self.steps_per_epoch))
        return "max_steps" if self.max_steps and self.max_steps < by_epochs else "epochs"

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.num_blocks, generator=generator).tolist()
            if self.lengths is not None:
                order = self._grouped_by_length(order)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def _grouped_by_length(self, order: list[int]) -> list[int]:
        """Within windows of 16 steps' worth of examples, longest first: each step's examples have similar
        lengths (as with Hugging Face's length-grouped sampler), while the windows keep the order random."""
        window = self.blocks_per_step * 16
        grouped = []
        for start in range(0, len(order), window):
            grouped += sorted(order[start : start + window], key=lambda i: -self.lengths[i])
        return grouped

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's block indices for the 0-based optimizer `step`, split into micro-batches."""
        epoch, position = divmod(step // self.repeats, self.batches_per_epoch)
        start = position * self.blocks_per_step + self.rank * self.blocks_per_rank
        chosen = self._order(epoch)[start : start + self.blocks_per_rank]
        return [chosen[i : i + self.micro_batch_size] for i in range(0, len(chosen), self.micro_batch_size)]
