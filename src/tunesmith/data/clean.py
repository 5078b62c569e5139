"""Normalize documents and drop empty and exact-duplicate ones, counting what was dropped and why."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from typing import Iterable, Iterator

_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFC, Unix newlines, single spaces, no trailing spaces and at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def clean_documents(raw: Iterable[str | None], counts: Counter) -> Iterator[str]:
    """Normalize and de-duplicate; `counts` gets read, kept and one entry per drop reason."""
    seen: set[bytes] = set()
    for text in raw:
        counts["read"] += 1
        if text is None:
            counts["dropped_missing_field"] += 1
            continue
        text = normalize_text(text)
        if not text:
            counts["dropped_empty"] += 1
            continue
        digest = text_digest(text)
        if digest in seen:
            counts["dropped_duplicate"] += 1
            continue
        seen.add(digest)
        counts["kept"] += 1
        yield text
