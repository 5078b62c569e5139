"""Content fingerprints for caches: a converted model and prepared data are reused only for identical inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 4 MB chunks so that large files never sit in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_identity(root: Path) -> list[tuple[str, int, int]]:
    """A model folder's files by name, size and modification time: what a cache computed from the model is keyed by
    (hashing gigabytes of weights at every start would cost more than the cache saves)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir() if p.is_file())
