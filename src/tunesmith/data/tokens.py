"""Token storage types and the tokenizer's identity for the cache key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def tokenizer_fingerprint(tokenizer) -> str:
    """Identifies the tokenization itself (vocabulary, merges, normalizer, EOS), not the object."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(body.encode("utf-8"))
    digest.update(f"eos={tokenizer.eos_token_id};len={len(tokenizer)}".encode())
    return digest.hexdigest()[:16]


def write_array(handle, values: np.ndarray, path: Path) -> None:
    """`values` appended to `handle` as raw bytes; a failed write (a full disk) names the file, which numpy's tofile
    does not ("1048662 requested and 0 written")."""
    try:
        handle.write(values.tobytes())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None

