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

from ..models import ResolvedModel, load_model, load_model_config
from ..models.weights import transformer_blocks
from ..runtime import autocast
from ..tasks.loss import forward
from .student import kept_blocks, make_student

CALIBRATION_ROWS = 64  # training rows the distances are averaged over: enough for a stable ranking, seconds to run
ROWS_PER_PASS = 8


@dataclass(frozen=True)
class Pick:
    kept: list[int]
    distance: float  # the removed run's angular distance, from 0 (no change) to 1 (opposite)
    tokens: int  # real tokens it was averaged over


class BlockStates:
    """The hidden states entering each block and leaving the last, caught by hooks during one forward."""

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

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def calibration_rows(count: int) -> list[int]:
    """Up to CALIBRATION_ROWS row indices spread evenly over the dataset, so the measure reads all of it, not its start."""
    step = max(1, count // CALIBRATION_ROWS)
    return list(range(0, count, step))[:CALIBRATION_ROWS]


@torch.no_grad()
def least_change_run(module: torch.nn.Module, model: torch.nn.Module, dataset, keep: int, device: torch.device,
                     precision: str) -> Pick:
    """The teacher's blocks to keep when `keep` of them stay: all but the consecutive run whose removal changes the
    hidden state least on `dataset`'s rows (read by `module`, the teacher or the task's wrapper of it)."""
    states = BlockStates(model)
    total = len(states.blocks)
    drop = total - keep
    sums, tokens = torch.zeros(total - drop + 1, dtype=torch.float64), 0
    try:
        rows = calibration_rows(len(dataset))
        for start in range(0, len(rows), ROWS_PER_PASS):
            batch = dataset.batch(rows[start : start + ROWS_PER_PASS]).to(device)
            with autocast(device, precision):
                forward(module, batch)
            real = batch.real_tokens()
            mask = torch.ones(batch.input_ids.shape, dtype=torch.bool, device=device) if real is None else real.bool()
            for first in range(total - drop + 1):
                cosine = torch.nn.functional.cosine_similarity(states.states[first][mask].float(),
                                                               states.states[first + drop][mask].float(), dim=-1, eps=1e-6)
                sums[first] += (torch.arccos(cosine.clamp(-1, 1)) / math.pi).sum().item()
            tokens += int(mask.sum())
            states.states = [None] * (total + 1)
    finally:
        states.remove()
    distances = sums / max(tokens, 1)
    first = int(torch.argmin(distances))
    return Pick([i for i in range(total) if not first <= i < first + drop], float(distances[first]), tokens)


def measured_student(teacher: ResolvedModel, keep: int, dataset, wrap, classifier: bool, device: torch.device, precision: str,
                     home, log=print) -> ResolvedModel:
    """The student keeping `keep` of the teacher's blocks, all but the run whose removal `dataset` says changes least
    (`wrap` the task's training module, which reads its batches); made on first use like any student from the teacher."""
    total = load_model_config(teacher).num_hidden_layers
    kept_blocks(total, keep)  # refuses a count the teacher cannot give before anything is loaded
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model = load_model(teacher, dtype=dtype, classifier=classifier).to(device).eval().requires_grad_(False)
    try:
        pick = least_change_run(wrap(model), model, dataset, keep, device, precision)
    finally:
        del model
    dropped = [i for i in range(total) if i not in pick.kept]
    log(f"student: removing the teacher's blocks {dropped[0]} to {dropped[-1]}, the run of {len(dropped)} whose input and "
        f"output differ least on {pick.tokens:,} training tokens (angular distance {pick.distance:.3f})")
    return make_student(teacher, pick.kept, home, log, {"pick": "similar", "distance": round(pick.distance, 4), "tokens": pick.tokens})


__all__ = ["Pick", "least_change_run", "measured_student"]
