"""Hidden-state distillation: each of the student's blocks learns the output of the teacher's block it stands for.

A student made by keeping some of the teacher's blocks (or any student of the teacher's width) is told, beside the
teacher's distributions, what the teacher's stack holds at each of its own blocks' depths: 1 minus the cosine
similarity of the two hidden states at every real token, averaged over blocks and tokens (DistilBERT's cosine
term, at every kept block as in TinyBERT). A kept block whose neighbours were removed learns to stand in for them,
where the output distributions alone tell it only the end result. Cosine rather than squared error: a few channels
of a transformer's residual stream (and its first token) run hundreds of times larger than the rest, and would own
a squared error.

The blocks' outputs are caught by forward hooks, so the packed classifier, LoRA and DistributedDataParallel, which
all wrap the model, leave them reachable without a second forward.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import ConfigError
from ..models.weights import transformer_blocks
from .student import STUDENT_FILE, kept_blocks


class BlockOutputs:
    """The outputs of a model's blocks in the forward passes made while `armed`, by block index (evaluation and a
    recomputing backward are not caught)."""

    def __init__(self, model: torch.nn.Module):
        self.outputs: dict[int, torch.Tensor] = {}
        self.armed = False
        self.handles = [block.register_forward_hook(self._catcher(index)) for index, block in enumerate(transformer_blocks(model))]

    def _catcher(self, index: int):
        def catch(_module, _args, output) -> None:
            if self.armed:
                self.outputs[index] = output[0] if isinstance(output, (tuple, list)) else output
        return catch

    def take(self) -> dict[int, torch.Tensor]:
        """The caught outputs, forgotten here so they are not held past the step."""
        outputs, self.outputs = self.outputs, {}
        return outputs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def block_pairs(student: torch.nn.Module, teacher: torch.nn.Module, student_path: str) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs: a student made from the teacher pairs each kept block with its original;
    another student of the teacher's width, its blocks with the teacher's evenly spaced ones (the last with the last)."""
    widths = [getattr(m.config, "hidden_size", None) for m in (student, teacher)]
    if widths[0] != widths[1]:
        raise ConfigError([f"distill.hidden: the student's hidden states have {widths[0]} channels and the teacher's {widths[1]}; "
                           "hidden-state distillation compares them channel by channel: set distill.hidden to 0, or use a "
                           "student made from the teacher (distill.student)"])
    ours, theirs = len(transformer_blocks(student)), len(transformer_blocks(teacher))
    record = Path(student_path) / STUDENT_FILE
    kept = json.loads(record.read_text())["kept"] if record.is_file() else None
    if kept is None or len(kept) != ours or max(kept) >= theirs:
        if ours > theirs:
            raise ConfigError([f"distill.hidden: the student has {ours} blocks and the teacher {theirs}; a deeper student has no "
                               "teacher block for each of its own: set distill.hidden to 0"])
        kept = list(range(theirs)) if ours == theirs else kept_blocks(theirs, ours)
    return list(enumerate(kept))


def hidden_distance(student: dict[int, torch.Tensor], teacher: dict[int, torch.Tensor], pairs: list[tuple[int, int]],
                    mask: torch.Tensor | None) -> torch.Tensor:
    """1 minus the cosine similarity of paired blocks' outputs, averaged over the tokens `mask` marks real (all when
    None) and over the pairs; fp32."""
    distances = []
    for ours, theirs in pairs:
        cosine = torch.nn.functional.cosine_similarity(student[ours].float(), teacher[theirs].float(), dim=-1, eps=1e-6)
        distance = 1 - cosine
        if mask is None:
            distances.append(distance.mean())
        else:
            weights = mask.to(distance.dtype)
            distances.append((distance * weights).sum() / weights.sum().clamp_min(1))
    return torch.stack(distances).mean()


class HiddenMatch:
    """The hooks on both models and the pairs of blocks: both forward passes of a batch run inside `catching()`, then
    `distance(batch)`."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, student_path: str):
        self.pairs = block_pairs(student, teacher, student_path)
        self.student, self.teacher = BlockOutputs(student), BlockOutputs(teacher)

    @contextmanager
    def catching(self):
        self.student.armed = self.teacher.armed = True
        try:
            yield
        finally:
            self.student.armed = self.teacher.armed = False

    def distance(self, batch) -> torch.Tensor:
        ours, theirs = self.student.take(), self.teacher.take()
        missing = [i for i, j in self.pairs if i not in ours or j not in theirs]
        if missing:
            raise RuntimeError(f"hidden-state distillation caught no output for student block {missing[0]}")
        return hidden_distance(ours, theirs, self.pairs, batch.attention_mask)
