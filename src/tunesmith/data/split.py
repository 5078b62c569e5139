"""A deterministic train/validation split by a stable hash of each document's text.

Hashing (not shuffling) means a document's side never depends on the other documents, so adding
data never moves documents that were already assigned.
"""

from __future__ import annotations

from .clean import text_digest

_BUCKETS = 1 << 32


def hash_bucket(text: str) -> float:
    """A number in [0, 1) fixed by the text alone."""
    return int.from_bytes(text_digest(text)[:4], "big") / _BUCKETS


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Documents whose bucket falls under val_fraction go to validation; at least one on each side."""
    buckets = [hash_bucket(doc) for doc in docs]
    val_index = {i for i, bucket in enumerate(buckets) if bucket < val_fraction}
    if not val_index and len(docs) > 1:
        val_index = {min(range(len(docs)), key=buckets.__getitem__)}
    if len(val_index) == len(docs) and len(docs) > 1:
        val_index.discard(max(val_index, key=buckets.__getitem__))
    train = [doc for i, doc in enumerate(docs) if i not in val_index]
    val = [doc for i, doc in enumerate(docs) if i in val_index]
    return train, val
