"""Tokenize documents in batches with the fast tokenizer and append the ids straight to a binary file."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np

BATCH_DOCUMENTS = 512


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def tokenizer_fingerprint(tokenizer) -> str:
    """Identifies the tokenization itself (vocabulary, merges, normalizer, EOS), not the object."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(body.encode("utf-8"))
    digest.update(f"eos={tokenizer.eos_token_id};len={len(tokenizer)}".encode())
    return digest.hexdigest()[:16]


def _batches(docs: Iterable[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_to_file(docs: Iterable[str], tokenizer, path: Path, dtype: np.dtype) -> int:
    """Write each document's ids followed by EOS; return the number of tokens written."""
    eos = tokenizer.eos_token_id
    total = 0
    with path.open("wb") as handle:
        for batch in _batches(docs, BATCH_DOCUMENTS):
            encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
            ids = np.fromiter(
                (token for doc_ids in encoded for token in (*doc_ids, eos)),
                dtype=dtype,
            )
            ids.tofile(handle)
            total += ids.size
    return total
