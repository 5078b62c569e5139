"""Variable-length examples (conversations, labelled texts): tokens, a loss mask and an optional class per example.

A chat or classification example keeps its own boundaries, so its mask and label stay aligned. For
evaluation, batches are right-padded to their longest example; for training, `PackedExamples` packs
examples into rows with position ids that restart at each one, which transformers turns into attention
confined to each example.
"""

from __future__ import annotations

import bisect
from array import array
from pathlib import Path

import numpy as np
import torch

from ..batch import IGNORE, Batch
from .tokens import write_array

class ExampleWriter:
    """Streams examples to `<split>.bin` (tokens) and `<split>.mask.bin` (1 where the loss falls); offsets and classes at close.

    Memory holds 16 bytes per example (its offset and class), not the examples.
    """

    def __init__(self, directory: Path, split: str, dtype: np.dtype):
        self.directory, self.split, self.dtype = directory, split, np.dtype(dtype)
        self.ids_path, self.mask_path = directory / f"{split}.bin", directory / f"{split}.mask.bin"
        self.ids_handle, self.mask_handle = self.ids_path.open("wb"), self.mask_path.open("wb")
        self.ends = array("q")
        self.classes = array("q")
        self.unit_starts = array("q")  # the first example of each unit (a conversation's pieces, a pair's two answers)
        self.tokens = 0
        self.targets = 0

    @property
    def written(self) -> int:
        """Examples written."""
        return len(self.ends)

    def start_unit(self) -> None:
        self.unit_starts.append(len(self.ends))

    def write(self, ids: np.ndarray, mask: np.ndarray, label: int = -1) -> None:
        write_array(self.ids_handle, np.asarray(ids).astype(self.dtype), self.ids_path)
        write_array(self.mask_handle, np.asarray(mask, dtype=np.uint8), self.mask_path)
        self.tokens += len(ids)
        self.ends.append(self.tokens)
        self.classes.append(label)
        self.targets += int(np.count_nonzero(mask))

    def take_last(self) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Remove the last unit written, all its examples (to move it to the other split); returns them."""
        self.ids_handle.flush()
        self.mask_handle.flush()
        first = self.unit_starts.pop() if self.unit_starts else len(self.ends) - 1
        start = self.ends[first - 1] if first else 0
        ids = np.fromfile(self.ids_path, dtype=self.dtype)[start:].astype(np.int64)
        mask = np.fromfile(self.mask_path, dtype=np.uint8)[start:]
        for handle in (self.ids_handle, self.mask_handle):
            handle.truncate(start * (self.dtype.itemsize if handle is self.ids_handle else 1))
            handle.seek(0, 2)
        bounds = [0] + [end - start for end in self.ends[first:]]
        pieces = [(ids[a:b], mask[a:b], label) for a, b, label in zip(bounds, bounds[1:], self.classes[first:])]
        del self.ends[first:], self.classes[first:]
        self.tokens = start
        self.targets -= int(np.count_nonzero(mask))
        return pieces

    def rows(self, block_size: int, keep_tail: bool = False) -> int:
        """The training rows: one per example."""
        return self.written

    def close(self) -> None:
        self.ids_handle.close()
        self.mask_handle.close()
        np.save(self.directory / f"{self.split}.offsets.npy", np.r_[0, np.asarray(self.ends, dtype=np.int64)].astype(np.int64))
        np.save(self.directory / f"{self.split}.classes.npy", np.asarray(self.classes, dtype=np.int64))

    def rewrite(self, spans: list) -> None:
        """After close: the files again as these units (`mix.Span`s, repeats allowed) in this order, each with all its examples."""
        empty = self.tokens == 0
        ids = np.zeros(0, dtype=self.dtype) if empty else np.memmap(self.ids_path, dtype=self.dtype, mode="r")
        mask = np.zeros(0, dtype=np.uint8) if empty else np.memmap(self.mask_path, dtype=np.uint8, mode="r")
        ends, classes = np.r_[0, np.asarray(self.ends, dtype=np.int64)], np.asarray(self.classes, dtype=np.int64)
        old = (self.ids_path, self.mask_path)
        self.ids_path, self.mask_path = (path.with_name(path.name + ".mix") for path in old)
        self.ids_handle, self.mask_handle = self.ids_path.open("wb"), self.mask_path.open("wb")
        self.ends, self.classes, self.unit_starts, self.tokens, self.targets = array("q"), array("q"), array("q"), 0, 0
        for span in spans:
            self.start_unit()
            for example in range(span.example_start, span.example_end):
                a, b = ends[example], ends[example + 1]
                self.write(np.asarray(ids[a:b]), np.asarray(mask[a:b]), int(classes[example]))
        self.close()
        del ids, mask
        for mixed, path in zip((self.ids_path, self.mask_path), old):
            mixed.replace(path)
        self.ids_path, self.mask_path = old


class Examples:
    """The examples of one split, memory-mapped; the same interface as TokenBlocks for the loop and evaluation."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, pad_id: int, use_classes: bool = False,
                 class_weights: np.ndarray | None = None):
        size = (directory / f"{split}.bin").stat().st_size
        self.tokens = np.memmap(directory / f"{split}.bin", dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
        self.mask = np.memmap(directory / f"{split}.mask.bin", dtype=np.uint8, mode="r") if size else np.zeros(0, dtype=np.uint8)
        self.offsets = np.load(directory / f"{split}.offsets.npy")
        self.classes = np.load(directory / f"{split}.classes.npy")
        self.pad_id = pad_id
        self.use_classes = use_classes
        self.class_weights = class_weights
        self.block_size = int(np.diff(self.offsets).max()) if len(self.offsets) > 1 else 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])

    def ids(self, index: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[index] : self.offsets[index + 1]], dtype=np.int64)

    def target_mask(self, index: int) -> np.ndarray:
        return np.asarray(self.mask[self.offsets[index] : self.offsets[index + 1]]) != 0

    @property
    def num_tokens(self) -> int:
        """Tokens that carry loss (assistant or label tokens; one per example with a classification head)."""
        return len(self) if self.use_classes else int(np.count_nonzero(self.mask))

    def prompt_ids(self, index: int) -> np.ndarray:
        """The tokens before the first answer token (mask 1): the prompt a sample generation continues."""
        mask = np.asarray(self.mask[self.offsets[index] : self.offsets[index + 1]]) == 1
        first = int(np.argmax(mask)) if mask.any() else len(mask)
        return self.ids(index)[:first]

    def reference_pair(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The prompt before the first answer (mask 1) and that answer's tokens, for scoring a generation against it."""
        mask = np.asarray(self.mask[self.offsets[index] : self.offsets[index + 1]]) == 1
        if not mask.any():
            return None
        first = int(np.argmax(mask))
        after = np.flatnonzero(~mask[first:])
        end = first + int(after[0]) if len(after) else len(mask)
        ids = self.ids(index)
        return ids[:first], ids[first:end]

    def batch(self, indices: list[int]) -> Batch:
        input_ids, labels, attention = padded_rows([(self.ids(i), self.target_mask(i)) for i in indices], self.pad_id)
        classes = torch.from_numpy(self.classes[indices]) if self.use_classes else None
        weights = torch.from_numpy(self.class_weights[self.classes[indices]]).float() if self.class_weights is not None else None
        return Batch(torch.from_numpy(input_ids), None if self.use_classes else torch.from_numpy(labels),
                     torch.from_numpy(attention), classes, weights)

    def batches_by_length(self, batch_size: int, limit: int | None = None) -> list[list[int]]:
        """Evaluation batches of similar lengths, so little of each is padding."""
        chosen = sorted(range(len(self))[: limit or None], key=self.length)
        return [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]


def padded_rows(pieces: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, target mask) pieces right-padded to the longest: input ids, labels (IGNORE off the mask) and attention."""
    width = max(len(ids) for ids, _ in pieces)
    input_ids = np.full((len(pieces), width), pad_id, dtype=np.int64)
    labels = np.full((len(pieces), width), IGNORE, dtype=np.int64)
    attention = np.zeros((len(pieces), width), dtype=np.int64)
    for row, (ids, mask) in enumerate(pieces):
        input_ids[row, : len(ids)] = ids
        labels[row, : len(ids)] = np.where(mask, ids, IGNORE)
        attention[row, : len(ids)] = 1
    return input_ids, labels, attention


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of examples grouped into rows of at most `capacity` tokens: best fit, longest first.

    Each example goes to the fullest row it still fits in; this leaves a few percent of a row empty on
    typical chat lengths (no library packs variable-length sequences without also collating them).
    """
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row number), sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        at = bisect.bisect_left(free, (length, -1))
        if at < len(free):
            room, row = free.pop(at)
        else:
            room, row = capacity, len(rows)
            rows.append([])
        rows[row].append(index)
        if room - length > 0:
            bisect.insort(free, (room - length, row))
    return rows


class PackedExamples:
    """Training examples packed into rows of up to `capacity` tokens, with no attention between them.

    Every position of a row is an example's token except a row's short tail; each example's position ids
    start at 0, and the target of its first token (predicted from the previous example's last) carries no
    loss, so a packed example trains exactly as it would alone. A classification head reads each example's
    class at its last token (`Batch.ends`).
    """

    def __init__(self, examples: Examples, capacity: int):
        self.examples = examples
        self.block_size = capacity
        lengths = [examples.length(i) for i in range(len(examples))]
        self.rows = pack_rows(lengths, max(capacity, max(lengths, default=1)))
        self.row_lengths = [sum(lengths[i] for i in row) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def length(self, index: int) -> int:
        return self.row_lengths[index]

    @property
    def num_tokens(self) -> int:
        return self.examples.num_tokens

    def batch(self, indices: list[int]) -> Batch:
        examples = self.examples
        width = max(self.row_lengths[i] for i in indices)
        input_ids = np.full((len(indices), width), examples.pad_id, dtype=np.int64)
        labels = np.full((len(indices), width), IGNORE, dtype=np.int64)
        positions = np.zeros((len(indices), width), dtype=np.int64)
        members = [e for i in indices for e in self.rows[i]]
        ends, lengths = [], torch.tensor([self.row_lengths[i] for i in indices])
        for r, index in enumerate(indices):
            at = 0
            for example in self.rows[index]:
                ids, mask = examples.ids(example), examples.target_mask(example)
                input_ids[r, at : at + len(ids)] = ids
                labels[r, at + 1 : at + len(ids)] = np.where(mask, ids, IGNORE)[1:]
                positions[r, at : at + len(ids)] = np.arange(len(ids))
                at += len(ids)
                ends.append(r * width + at - 1)
            positions[r, at:] = np.arange(width - at)  # the padded tail: a sequence of its own, without targets
        weights = None
        if examples.class_weights is not None:
            weights = torch.from_numpy(examples.class_weights[examples.classes[members]]).float()
            if not examples.use_classes:  # each position weighs as its example's class
                weights = _per_position(weights, indices, self.rows, width, [examples.length(e) for e in members])
        if examples.use_classes:
            return Batch(torch.from_numpy(input_ids), classes=torch.from_numpy(examples.classes[members]), weights=weights,
                         position_ids=torch.from_numpy(positions), ends=torch.as_tensor(ends), lengths=lengths)
        return Batch(torch.from_numpy(input_ids), torch.from_numpy(labels), weights=weights, position_ids=torch.from_numpy(positions),
                     lengths=lengths)

    def batches_by_length(self, batch_size: int, limit: int | None = None) -> list[list[int]]:
        chosen = list(range(len(self)))[: limit or None]
        return [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]


def _per_position(example_weights: torch.Tensor, indices: list[int], rows: list[list[int]], width: int,
                  lengths: list[int]) -> torch.Tensor:
    out = torch.zeros((len(indices), width))
    number = 0
    for r, index in enumerate(indices):
        at = 0
        for _ in rows[index]:
            out[r, at : at + lengths[number]] = example_weights[number]
            at += lengths[number]
            number += 1
    return out


ANSWER_KINDS = {3: "chosen", 2: "rejected", 1: "thumbs up", 0: "thumbs down"}  # data.preferences' codes


def marked_text(dataset, index: int, tokenizer) -> str:
    """One example decoded with its loss-carrying spans in ⟦ ⟧ (and its class, for a classification head); a preference
    item shows each of its answers, named."""
    batch = dataset.batch([index])
    if batch.preference is not None:
        return "\n".join(f"[{ANSWER_KINDS[int(code)]}] {_marked_row(batch, row, tokenizer)}"
                         for row, code in enumerate(batch.preference.tolist()) if code in ANSWER_KINDS)
    return _marked_row(batch, 0, tokenizer)


def _marked_row(batch: Batch, row: int, tokenizer) -> str:
    ids = batch.input_ids[row][batch.attention_mask[row].bool()] if batch.attention_mask is not None else batch.input_ids[row]
    if batch.classes is not None:
        return f"{tokenizer.decode(ids.tolist())}\n  -> class {int(batch.classes[row])}"
    if batch.labels is None:
        return "⟦" + tokenizer.decode(ids.tolist()) + "⟧"
    targets = (batch.labels[row][: len(ids)] != IGNORE).tolist()
    parts, start = [], 0
    for position in range(1, len(ids) + 1):
        if position == len(ids) or targets[position] != targets[start]:
            text = tokenizer.decode(ids[start:position].tolist())
            parts.append(f"⟦{text}⟧" if targets[start] else text)
            start = position
    return "".join(parts)
