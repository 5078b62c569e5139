"""The running batch: rows of token caches that requests join and leave between decoding steps.

Prompts are left-padded, so every row's newest token sits in the last column and one forward pass
decodes them all; position ids are counted from each row's own first real token. A new request is
prefilled on its own, then its cache is padded on the left to the batch's length and stacked under it:
continuous batching on a plain `DynamicCache`, for any model whose cache layers are plain key/value tensors.
"""

from __future__ import annotations

import torch


def positions(mask: torch.Tensor, new: int) -> torch.Tensor:
    """Position ids of the last `new` columns: each row counts from its own first real token."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)[:, -new:]


def left_padded(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def _plain_layers(cache) -> list | None:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return layers if layers and all(type(layer) is DynamicLayer for layer in layers) else None


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class RunningBatch:
    """The cache, attention mask and last tokens of the rows being decoded, in row order."""

    def __init__(self, model):
        self.model = model
        self.cache = None
        self.mask: torch.Tensor | None = None  # (rows, columns)
        self.last: torch.Tensor | None = None  # (rows, 1)

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def can_join(self) -> bool:
        """New rows can be stacked onto a running batch only when its cache is plain key/value tensors."""
        return self.rows == 0 or _plain_layers(self.cache) is not None

    def prefill(self, prompts: list[list[int]], repeats: list[int], pad_id: int) -> torch.Tensor:
        """Run the prompts, each row repeated for its request's `n` choices, and add them to the batch.

        Returns the next-token logits of the new rows, (sum(repeats), vocabulary), as float32.
        """
        device = next(self.model.parameters()).device
        ids, mask = left_padded(prompts, pad_id, device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask, ids.shape[1]), use_cache=True,
                         logits_to_keep=1)
        index = torch.tensor([row for row, n in enumerate(repeats) for _ in range(n)], device=device)
        cache, logits = out.cache, out.logits[:, -1, :].float()
        if len(index) != len(prompts) or bool((index != torch.arange(len(prompts), device=device)).any()):
            cache.batch_select_indices(index)
            mask, logits = mask[index], logits[index]
        self._stack(cache, mask)
        return logits

    def _stack(self, cache, mask: torch.Tensor) -> None:
        if self.rows == 0:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(_plain_layers(self.cache), _plain_layers(cache)):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])

    def set_last(self, tokens: list[int]) -> None:
        """The tokens just chosen for every row, fed at the next step."""
        self.last = torch.tensor(tokens, device=self.mask.device)[:, None]

    def extend_last(self, tokens: list[int]) -> None:
        """The first tokens chosen for the rows just prefilled, which sit at the end of the batch."""
        column = torch.tensor(tokens, device=self.mask.device)[:, None]
        self.last = column if self.last is None else torch.cat([self.last, column])

    def step(self) -> torch.Tensor:
        """Feed each row its last token; returns the next-token logits, (rows, vocabulary), as float32."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        out = self.model(input_ids=self.last, attention_mask=self.mask, position_ids=positions(self.mask, 1),
                         cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.logits[:, -1, :].float()

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in `rows`, and the leading columns that only padding still uses."""
        if len(rows) == self.rows:
            return
        if not rows:
            self.cache = self.mask = self.last = None
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.last = self.mask[index], self.last[index]
        first = int(self.mask.any(dim=0).long().argmax())
        if first and _plain_layers(self.cache) is not None:
            for layer in _plain_layers(self.cache):
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def reset(self) -> None:
        self.cache = self.mask = self.last = None
