"""The grammar of `data.template`: `{field}` is a record's field or column, `{{` and `}}` are literal braces, and `\\n`
and `\\t` typed as two characters (as on a command line) are a line break and a tab.

Written by hand because `str.format`'s grammar reads `:` and `!` inside braces as a format spec and a conversion, so a
column such as `Unnamed: 2` (pandas' name for a blank header) could not be named; here a field is everything between
its braces.
"""

from __future__ import annotations

EXAMPLE = '"{title}\\n\\n{body}"'


def template_parts(template: str) -> list[tuple[str, str | None]]:
    """The template as (literal text, field name or None) pairs in order; ValueError, in words, for a brace out of place."""
    template = template.replace("\\n", "\n").replace("\\t", "\t")
    parts: list[tuple[str, str | None]] = []
    literal: list[str] = []
    index = 0
    while index < len(template):
        char = template[index]
        if template.startswith(("{{", "}}"), index):
            literal.append(char)
            index += 2
        elif char == "}":
            raise ValueError(f"the '}}' at character {index + 1} closes no field; write '}}}}' for a brace in the text")
        elif char == "{":
            name, index = _field(template, index)
            parts.append(("".join(literal), name))
            literal = []
        else:
            literal.append(char)
            index += 1
    if not parts:
        raise ValueError(f"names no field, so every document would be the same text; name fields in braces, as {EXAMPLE}")
    parts.append(("".join(literal), None))
    return parts


def _field(template: str, start: int) -> tuple[str, int]:
    """The field whose '{' is at `start`, and where the text after its '}' begins."""
    end = template.find("}", start + 1)
    inner = template.find("{", start + 1)
    if end == -1:
        raise ValueError(f"the '{{' at character {start + 1} is never closed; write '{{{{' for a brace in the text, "
                         f"or name a field as {EXAMPLE}")
    if inner != -1 and inner < end:
        raise ValueError(f"the '{{' at character {inner + 1} is inside the field opened at character {start + 1}; a field's "
                         "name cannot hold braces: close the field first, or write '{{' for a brace in the text")
    name = template[start + 1:end]
    if not name.strip():
        raise ValueError(f"'{{{name}}}' at character {start + 1} names no field; write the field's name in it, as {EXAMPLE}")
    return name, end + 1
