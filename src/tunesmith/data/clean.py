"""Per-document text transforms: Unicode repair, control characters, leftover markup, PII masking, whitespace."""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from typing import Callable

from ..config import CleanConfig
from .html import ELEMENTS

_BLANKS = "\\t\\u00a0\\u2000-\\u200b\\u202f\\u205f\\u3000"
# a run of horizontal whitespace other than one plain space: a lone space (the common case) never matches
_SPACES = re.compile(f"[{_BLANKS}][ {_BLANKS}]*| [ {_BLANKS}]+")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\ufeff]")
# a start or end tag with well-formed attributes; values are bounded and never span a `<`, so a stray `<a`
# or an unclosed quote costs a short scan, not one to the end of the text
_TAG = re.compile(r"""</?([a-zA-Z][a-zA-Z0-9]*)(?:\s+[a-zA-Z_:@][-\w:.@]*(?:\s*=\s*(?:"[^"<]{0,2000}"|'[^'<]{0,2000}'|[^\s"'=<>`]{1,2000}))?)*\s*/?>""")
_DOCTYPE = re.compile(r"<!doctype\s[^<>]{0,200}>", re.IGNORECASE)
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]{2,8});")
PII_PATTERNS = {
    "email": (re.compile(r"\b[\w.+-]+@[\w-]+(\.[\w-]+)+\b"), "<EMAIL>"),
    "url": (re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+"), "<URL>"),
    "ip": (re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"), "<IP>"),
    "phone": (re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){2,3}(?![\w.])"), "<PHONE>"),
}


def normalize_text(text: str) -> str:
    """NFC, Unix newlines, single spaces, no trailing spaces and at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


# UTF-8 read as Latin-1/Windows-1252 leaves a lead byte (Â..ô) before a continuation-range character:
# text without that pattern cannot hold the mojibake ftfy repairs, and ftfy costs ~0.5 ms a document
_MOJIBAKE_HINT = re.compile("[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u203a\u20ac\u2122]")


def fix_unicode(text: str) -> str:
    """Repair mojibake with ftfy, then NFC. Quotes, ligatures and widths are left as written."""
    if not text.isascii() and _MOJIBAKE_HINT.search(text):
        import ftfy

        text = ftfy.fix_text(text, unescape_html=False, uncurl_quotes=False, fix_latin_ligatures=False,
                             fix_character_width=False, normalization="NFC")
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def strip_control(text: str) -> str:
    return _CONTROL.sub("", text)


def _html_tag(match: re.Match) -> str:
    """Only elements of the HTML standard count, written in one case as HTML is: `<unk>`, `<EMAIL>` and
    `List<Map>` (a capitalized name is a type in code, not a tag) are text."""
    name = match.group(1)
    return " " if name.lower() in ELEMENTS and (name.islower() or name.isupper()) else match.group(0)


def _strip_comments(text: str) -> str:
    """`<!-- ... -->` removed in one left-to-right scan: an unclosed `<!--` ends the scan, it is not retried per start."""
    parts, position = [], 0
    while (start := text.find("<!--", position)) != -1:
        end = text.find("-->", start + 4)
        if end == -1:
            break
        parts.append(text[position:start] + " ")
        position = end + 3
    return "".join(parts) + text[position:] if parts else text


def strip_markup(text: str) -> str:
    """Leftover HTML (tags of the standard's elements, comments, doctype) removed and entities decoded; other text kept."""
    if "<" not in text and "&" not in text:
        return text
    if "<" in text:
        text = _TAG.sub(_html_tag, _DOCTYPE.sub(" ", _strip_comments(text)))
    return _ENTITY.sub(lambda m: html.unescape(m.group(0)), text) if "&" in text else text


def mask_pii(text: str, kinds: list[str]) -> str:
    for kind in ("email", "url", "ip", "phone"):  # e-mails and URLs first: they contain digit runs
        if kind in kinds:
            pattern, placeholder = PII_PATTERNS[kind]
            text = pattern.sub(placeholder, text)
    return text


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def transforms(cfg: CleanConfig) -> list[tuple[str, Callable[[str], str]]]:
    """The enabled text transforms, in the order they run; each is counted in the report by name."""
    steps: list[tuple[str, Callable[[str], str]]] = []
    if cfg.fix_unicode:
        steps.append(("fix_unicode", fix_unicode))
    if cfg.strip_control:
        steps.append(("strip_control", strip_control))
    if cfg.strip_markup:
        steps.append(("strip_markup", strip_markup))
    if cfg.mask_pii:
        kinds = list(cfg.mask_pii)
        steps.append(("mask_pii", lambda text: mask_pii(text, kinds)))
    if cfg.normalize_whitespace:
        steps.append(("normalize_whitespace", normalize_text))
    else:
        steps.append(("strip", str.strip))
    return steps
