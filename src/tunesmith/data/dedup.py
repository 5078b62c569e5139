"""Near-duplicate detection: MinHash signatures over 5-token shingles, indexed with datasketch's MinHashLSH.

Signatures are computed for a whole batch of documents at once with numpy, from the token ids that
prepare has already made, instead of re-splitting and hashing the text shingle by shingle in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHINGLE = 5
NUM_PERM = 128
_MIX = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1], dtype=np.uint64)


def shingle_hashes(docs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every 5-token window inside each document, and the document each belongs to.

    A document shorter than five tokens contributes one hash of all its tokens.
    """
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    ends = np.cumsum(lengths)
    ids = np.concatenate(docs).astype(np.uint64)
    hashes, owners = [], []
    if len(ids) >= SHINGLE:
        windows = np.lib.stride_tricks.sliding_window_view(ids, SHINGLE)  # (tokens - 4, 5)
        owner = np.repeat(np.arange(len(docs)), lengths)[: len(windows)]
        inside = np.arange(len(windows)) + SHINGLE <= ends[owner]
        hashes.append((windows[inside] * _MIX).sum(axis=1, dtype=np.uint64))
        owners.append(owner[inside])
    for index in np.flatnonzero(lengths < SHINGLE):
        short = docs[index].astype(np.uint64)
        hashes.append(np.array([(short * _MIX[: len(short)]).sum(dtype=np.uint64)], dtype=np.uint64))
        owners.append(np.array([index]))
    mixed = np.concatenate(hashes)
    mixed ^= mixed >> np.uint64(29)
    owner = np.concatenate(owners)
    order = np.argsort(owner, kind="stable")
    return mixed[order] & np.uint64(0xFFFFFFFF), owner[order]


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit affects every output bit."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


class MinHasher:
    """One-permutation MinHash with densification (Shrivastava 2017): one hash per shingle, not NUM_PERM.

    Each shingle's 64-bit hash picks a bin (top bits) and competes for that bin's minimum (low 32 bits).
    Empty bins (short documents) borrow the next filled bin's value, shifted by the distance, the same
    way for every document, so similar documents still agree bin by bin. The agreement rate estimates
    Jaccard similarity as well as NUM_PERM independent permutations, at a hundredth of the cost.
    """

    def __init__(self, seed: int = 1):
        self.seed = np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)

    def signatures(self, docs: list[np.ndarray]) -> np.ndarray:
        """(documents, NUM_PERM) uint32 signatures for a batch of token-id arrays."""
        hashes, owner = shingle_hashes(docs)
        mixed = _mix64(hashes ^ self.seed)
        bins = (mixed >> np.uint64(64 - NUM_PERM.bit_length() + 1)).astype(np.int64)  # top log2(NUM_PERM) bits
        values = (mixed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        empty = np.iinfo(np.uint32).max
        result = np.full((len(docs), NUM_PERM), empty, dtype=np.uint32)
        np.minimum.at(result, (owner, bins), values)
        return _densify(result, empty)


def _densify(signatures: np.ndarray, empty: int) -> np.ndarray:
    """Fill each empty bin from the nearest filled bin to its right (circularly), offset by the distance."""
    filled = signatures != empty
    rows = filled.any(axis=1) & ~filled.all(axis=1)
    if not rows.any():
        return signatures
    part = signatures[rows]
    width = part.shape[1]
    positions = np.arange(width)
    big = 2 * width
    at = np.where(filled[rows], positions, big)
    following = np.minimum.accumulate(at[:, ::-1], axis=1)[:, ::-1]  # nearest filled bin at or after, no wrap
    first = at.min(axis=1, keepdims=True)
    source = np.where(following == big, first + width, following)
    distance = (source - positions).astype(np.uint32)
    part = np.take_along_axis(part, source % width, axis=1) + distance * np.uint32(0x9E3779B1)
    signatures[rows] = part
    return signatures


@dataclass
class NearDuplicateIndex:
    """Finds, for a signature, the earliest indexed document it nearly copies (Jaccard >= threshold)."""

    threshold: float
    hasher: MinHasher = field(default_factory=MinHasher)
    _signatures: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        from datasketch import MinHash, MinHashLSH

        self._lsh = MinHashLSH(threshold=self.threshold, num_perm=NUM_PERM)
        self._permutations = MinHash(num_perm=NUM_PERM, seed=1).permutations  # unused by LSH; spares MinHash making its own

    def minhash(self, signature: np.ndarray):
        """The datasketch object that the LSH index takes, wrapping a signature."""
        from datasketch import MinHash

        return MinHash(num_perm=NUM_PERM, hashvalues=signature, permutations=self._permutations, scheme="affine32")

    def match(self, minhash) -> int | None:
        """LSH candidates are confirmed on the full signature, so a chance band collision does not count."""
        best = None
        for key in self._lsh.query(minhash):
            if np.mean(self._signatures[key] == minhash.hashvalues) >= self.threshold and (best is None or key < best):
                best = key
        return best

    def add(self, key: int, minhash) -> None:
        self._lsh.insert(key, minhash, check_duplication=False)
        self._signatures[key] = minhash.hashvalues
