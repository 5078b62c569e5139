"""The ground floor's data types: one batch as the model takes it, the label that carries no loss, and padding.

Beside `runtime.py` (device, precision, out-of-memory), at the bottom of the import graph: data, loss,
tasks, training and inference all use them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

IGNORE = -100  # the label that carries no loss (PyTorch's cross-entropy ignore_index)


@dataclass
class Batch:
    """One batch for the model: `labels` None means every next token is a target (packed text)."""

    input_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor | None = None  # (B, T) token ids where the loss falls, IGNORE elsewhere
    attention_mask: torch.Tensor | None = None  # (B, T) 1 for real tokens, 0 for padding
    classes: torch.Tensor | None = None  # (B,) class index, for a classification head
    weights: torch.Tensor | None = None  # (B,) per-example loss weights (class weighting); (B, T) per position when packed
    position_ids: torch.Tensor | None = None  # (B, T) restarting at 0 where a packed document or example begins
    ends: torch.Tensor | None = None  # (N,) flat (B*T) index of each packed example's last token, where its class is read
    preference: torch.Tensor | None = None  # (B,) what each row's answer is: chosen, rejected, desirable, undesirable, KL row
    reference: torch.Tensor | None = None  # (B,) the reference model's log-probability of each row's answer, when precomputed
    teacher_ids: torch.Tensor | None = None  # (N, k) a distillation teacher's top k tokens at each scored position, when cached
    teacher_logprobs: torch.Tensor | None = None  # (N, k) its log-probabilities of them
    lengths: torch.Tensor | None = None  # (B,) the real tokens at the start of each packed row; the rest is padding

    def to(self, device: torch.device) -> "Batch":
        """Copied to `device`; to a GPU from pinned memory without blocking, so the copy overlaps the previous step."""
        def move(value):
            if not isinstance(value, torch.Tensor):
                return value
            if device.type == "cuda" and value.device.type == "cpu":
                value = value.pin_memory()
            return value.to(device, non_blocking=True)

        return replace(self, **{name: move(value) for name, value in self.__dict__.items()})

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def target_weights(self, targets: torch.Tensor) -> torch.Tensor | None:
        """The loss weights of next-token `targets` (B, T-1): the row's weight, or the weight of each target's position."""
        if self.weights is None:
            return None
        return self.weights[:, 1:] if self.weights.dim() == 2 else self.weights[:, None].expand_as(targets)

    def real_tokens(self) -> torch.Tensor | None:
        """(B, T) 1 at real tokens and 0 at padding; None when every position is real."""
        if self.attention_mask is not None:
            return self.attention_mask
        if self.lengths is not None:
            return (torch.arange(self.input_ids.shape[1], device=self.input_ids.device)[None] < self.lengths[:, None]).long()
        return None

    def model_inputs(self) -> dict:
        """The keyword arguments of the model's forward: padding's attention mask, or packing's position ids."""
        inputs = {"input_ids": self.input_ids}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        return inputs


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows right-padded to the longest: (B, T) ids and the attention mask."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        attention[r, : len(row)] = 1
    return ids, attention
