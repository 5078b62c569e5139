"""Hidden-state distillation: each of the student's blocks learns the output of the teacher's block it stands for.

A student made by keeping some of the teacher's blocks (or any student of the teacher's width) is told, beside the
teacher's distributions, what the teacher's stack holds at each of its own blocks' depths: 1 minus the cosine
similarity of the two hidden states at every real token, averaged over blocks and tokens (DistilBERT's cosine
term, at every kept block as in TinyBERT). A kept block whose neighbours were removed learns to stand in for them,
where the output distributions alone tell it only the end result. Cosine rather than squared error: it weighs every
token alike, where a squared error would belong to the few tokens (the first one above all) whose hidden states run
hundreds of times larger than the rest.

The blocks' outputs are caught by forward hooks, so the packed classifier, LoRA and DistributedDataParallel, which
all wrap the model, leave them reachable without a second forward.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..errors import ConfigError
from ..models.weights import transformer_blocks
from .losses import masked_mean
from .student import kept_blocks


class BlockOutputs:
    """The outputs of some of a model's blocks in the forward passes made while `armed`, by block index (evaluation and a
    recomputing backward are not caught)."""

    def __init__(self, model: torch.nn.Module, indices: list[int]):
        self.outputs: dict[int, torch.Tensor] = {}
        self.armed = False
        blocks = transformer_blocks(model)
        self.handles = [blocks[index].register_forward_hook(self._catcher(index)) for index in indices]

    def _catcher(self, index: int):
        def catch(_module, _args, output) -> None:
            if self.armed:
                self.outputs[index] = output[0] if isinstance(output, (tuple, list)) else output
        return catch

    def take(self) -> dict[int, torch.Tensor]:
        """The caught outputs, forgotten here so they are not held past the step."""
        outputs, self.outputs = self.outputs, {}
        return outputs


def block_pairs(student: torch.nn.Module, teacher: torch.nn.Module, record: dict | None) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs: a student cut from a teacher of this depth (its `record`, checked by
    `read_record`) pairs each kept block with its original; another student of the teacher's width, its blocks with the
    teacher's evenly spaced ones (the last with the last)."""
    widths = [getattr(m.config, "hidden_size", None) for m in (student, teacher)]
    if None in widths or widths[0] != widths[1]:
        shown = [str(w) if w is not None else "an unknown number of" for w in widths]
        raise ConfigError([f"distill.hidden: the student's hidden states have {shown[0]} channels and the teacher's {shown[1]}; "
                           "hidden-state distillation compares them channel by channel: set distill.hidden to 0, or use a "
                           "student made from the teacher (distill.student)"])
    ours, theirs = len(transformer_blocks(student)), len(transformer_blocks(teacher))
    fits = record is not None and record["teacher_blocks"] == theirs and len(record["kept"]) == ours
    kept = record["kept"] if fits else None
    if kept is None:
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
        distance = 1 - torch.nn.functional.cosine_similarity(student[ours].float(), teacher[theirs].float(), dim=-1, eps=1e-6)
        distances.append(distance.mean() if mask is None else masked_mean(distance, mask.to(distance.dtype)))
    return torch.stack(distances).mean()


class HiddenMatch:
    """The hooks on both models and the pairs of blocks: both forward passes of a batch run inside `catching()`, then
    `distance(batch)`."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, record: dict | None):
        self.pairs = block_pairs(student, teacher, record)
        self.student = BlockOutputs(student, [ours for ours, _ in self.pairs])
        self.teacher = BlockOutputs(teacher, [theirs for _, theirs in self.pairs])

    def describe(self) -> str:
        return "distill.hidden: the student's blocks learn the outputs of the teacher's blocks " + \
            ", ".join(f"{ours}<-{theirs}" for ours, theirs in self.pairs)

    @contextmanager
    def catching(self):
        """Arms the hooks for the forward passes inside; what a failed pass caught is let go (with its graph)."""
        self.student.take(), self.teacher.take()
        self.student.armed = self.teacher.armed = True
        try:
            yield
        except BaseException:
            self.student.take(), self.teacher.take()
            raise
        finally:
            self.student.armed = self.teacher.armed = False

    def distance(self, batch) -> torch.Tensor:
        ours, theirs = self.student.take(), self.teacher.take()
        missing = [i for i, j in self.pairs if i not in ours or j not in theirs]
        if missing:
            raise RuntimeError(f"hidden-state distillation caught no output for student block {missing[0]}")
        return hidden_distance(ours, theirs, self.pairs, batch.real_tokens())
