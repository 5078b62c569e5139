"""Exact and near-duplicate detection. Near duplicates use MinHash LSH (datasketch) over 5-token shingles.

Shingles are hashed from token ids with numpy, so near-duplicate detection rides on the tokenization
that prepare does anyway instead of re-splitting the text in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHINGLE = 5
NUM_PERM = 128
_MIX = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1], dtype=np.uint64)


def shingle_hashes(ids: np.ndarray) -> np.ndarray:
    """32-bit hashes of the distinct 5-token windows of one document (one window if it is shorter)."""
    ids = ids.astype(np.uint64)
    width = min(SHINGLE, len(ids))
    if width == 0:
        return np.zeros(1, dtype=np.uint64)
    view = np.lib.stride_tricks.sliding_window_view(ids, width)  # (windows, width)
    mixed = (view * _MIX[:width]).sum(axis=1, dtype=np.uint64)
    mixed ^= mixed >> np.uint64(29)
    return np.unique(mixed & np.uint64(0xFFFFFFFF))


def _identity(value):
    return value


@dataclass
class NearDuplicateIndex:
    """Assigns each document to a cluster: its own, or that of an earlier document it nearly copies."""

    threshold: float
    _lsh: object = field(init=False, repr=False)
    _signatures: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _permutations: tuple = field(init=False, repr=False)

    def __post_init__(self):
        from datasketch import MinHash, MinHashLSH

        self._lsh = MinHashLSH(threshold=self.threshold, num_perm=NUM_PERM)
        self._permutations = MinHash(num_perm=NUM_PERM, seed=1).permutations

    def signature(self, ids: np.ndarray):
        from datasketch import MinHash

        minhash = MinHash(num_perm=NUM_PERM, hashfunc=_identity, permutations=self._permutations, scheme="affine32")
        minhash.update_batch(shingle_hashes(ids))
        return minhash

    def match(self, minhash) -> int | None:
        """The earliest indexed document whose estimated Jaccard similarity reaches the threshold."""
        best = None
        for key in self._lsh.query(minhash):
            similarity = float(np.mean(self._signatures[key] == minhash.hashvalues))
            if similarity >= self.threshold and (best is None or key < best):
                best = key
        return best

    def add(self, key: int, minhash) -> None:
        self._lsh.insert(key, minhash, check_duplication=False)
        self._signatures[key] = minhash.hashvalues.copy()
