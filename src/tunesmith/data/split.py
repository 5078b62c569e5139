"""A deterministic train/validation split by a stable hash of each document's text.

Hashing (not shuffling) means a document's side never depends on the other documents, so adding
data never moves documents that were already assigned.
"""

from __future__ import annotations

_BUCKETS = 1 << 32


def hash_bucket(digest: bytes) -> float:
    """A number in [0, 1) fixed by a document's text digest alone."""
    return int.from_bytes(digest[:4], "big") / _BUCKETS
