"""Weighted training sources: each source's share of the training tokens, set by up- or down-sampling whole units.

A unit (a document, a conversation) is repeated or left out whole, never cut, so the shares are met to
within the size of a unit. The seed fixes which units are repeated or left out, and the order they are
written in, so a source's units are spread through the training file rather than grouped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    """One training unit where its writer put it: its source, its tokens and its examples (one for packed text)."""

    source: int
    token_start: int
    token_end: int
    example_start: int
    example_end: int

    @property
    def tokens(self) -> int:
        return self.token_end - self.token_start


def source_shares(weights: list[float | None], replay: float) -> list[float]:
    """Each source's share of the training tokens: the data's sources split 1 - replay by weight, the last (replay) source gets replay.

    `weights` holds one entry per data source (None: one unweighted source) and, when replay > 0, None for the rehearsal source last.
    """
    data = weights[:-1] if replay else weights
    given = [w if w is not None else 1.0 for w in data]
    shares = [(1.0 - replay) * w / sum(given) for w in given]
    return shares + ([replay] if replay else [])


def _take(units: np.ndarray, tokens: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """Whole copies of the source, then a random subset whose tokens come closest to what is left of `target`."""
    have = float(tokens[units].sum())
    copies = int(target // have)
    rest = target - copies * have
    shuffled = rng.permutation(units)
    running = np.cumsum(tokens[shuffled])
    cut = int(np.searchsorted(running, rest))
    if cut < len(shuffled) and running[cut] - rest < rest - (running[cut - 1] if cut else 0.0):
        cut += 1
    return np.concatenate([np.tile(units, copies), shuffled[:cut]])


def mixed_order(spans: list[Span], shares: list[float], replay: float, seed: int) -> tuple[list[int], list[dict]]:
    """The units to write (indices into `spans`, repeats allowed, shuffled) and each source's figures.

    The total stays that of the data's own sources, with the rehearsal source (the last, when `replay`) added
    on top: weights change the mix of what is trained on, replay adds to it.
    """
    rng = np.random.default_rng(seed)
    source = np.array([span.source for span in spans], dtype=np.int64)
    tokens = np.array([span.tokens for span in spans], dtype=np.int64)
    own = source != len(shares) - 1 if replay else np.ones(len(spans), dtype=bool)
    total = float(tokens[own].sum()) / (1.0 - replay)
    chosen, figures = [], []
    for index, share in enumerate(shares):
        units = np.flatnonzero(source == index)
        picked = _take(units, tokens, share * total, rng) if len(units) else units
        chosen.append(picked)
        figures.append({"units": int(len(units)), "units_used": int(len(picked)), "tokens": int(tokens[units].sum()),
                        "tokens_used": int(tokens[picked].sum()), "target_share": share})
    order = rng.permutation(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    used = sum(figure["tokens_used"] for figure in figures) or 1
    for figure in figures:
        figure["actual_share"] = figure["tokens_used"] / used
    return order.tolist(), figures
