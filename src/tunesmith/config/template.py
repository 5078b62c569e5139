"""The grammar of `data.template`: `{field}` is a record's field or column, `{{` and `}}` are literal braces.

Written by hand because `str.format`'s grammar reads `:` and `!` inside braces as a format spec and a conversion, so a
column such as `Unnamed: 2` (pandas' name for a blank header) could not be named; here a field is everything between
its braces.
"""

from __future__ import annotations

EXAMPLE = '"{title}\\n\\n{body}"'


def template_parts(template: str) -> list[tuple[str, str | None]]:
    """The template as (literal text, field name or None) pairs in order; ValueError, in words, for a brace out of place."""
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
            end = template.find("}", index + 1)
            opened = template.find("{", index + 1)
            if end == -1 or (opened != -1 and opened < end):
                raise ValueError(f"the '{{' at character {index + 1} is never closed; write '{{{{' for a brace in the text, "
                                 f"or name a field as {EXAMPLE}")
            name = template[index + 1:end]
            if not name.strip():
                raise ValueError(f"'{{{name}}}' at character {index + 1} names no field; write the field's name in it, as {EXAMPLE}")
            parts.append(("".join(literal), name))
            literal = []
            index = end + 1
        else:
            literal.append(char)
            index += 1
    if not any(name for _, name in parts):
        raise ValueError(f"names no field, so every document would be the same text; name fields in braces, as {EXAMPLE}")
    parts.append(("".join(literal), None))
    return parts

