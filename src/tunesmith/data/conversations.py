"""Conversations from chat logs (OpenAI-style messages, ShareGPT, `Name: text` transcripts, one-row-per-turn tables)
and from instruction data (prompt and completion pairs, Alpaca's instruction, input and output).

Each becomes a list of {role, content} messages with consecutive turns of one role merged; the chat
template, loss mask and stop tokens are the chat task's (`tasks/chat.py`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator

from ..config import ChatConfig, DataConfig
from ..errors import UserError
from .pipeline import clean_one
from .read import DocumentReader, lookup
from .report import DataReport
from .units import Unit

KNOWN_ROLES = {
    "system": "system",
    "user": "user", "human": "user", "customer": "user", "client": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "agent": "assistant", "model": "assistant",
    "support": "assistant",
}
_SPEAKER_LINE = re.compile(r"^\s*([^:\n]{1,40}?)\s*:\s?(.*)$")

Message = dict[str, str]


def _role(name: str, roles: dict[str, str]) -> str | None:
    if name in roles:
        return roles[name]
    lowered = {key.lower(): value for key, value in roles.items()}
    return lowered.get(name.strip().lower(), KNOWN_ROLES.get(name.strip().lower()))


def message_text(value, where: str) -> str:
    """A turn's content as text: a string, a number, or a list of text parts (`[{type: text, text: ...}]`, as
    OpenAI's messages carry it); any other object is refused rather than trained on as its Python form."""
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(part, dict) and isinstance(part.get("text"), str) for part in value):
        return "\n".join(part["text"] for part in value)
    kind = {dict: "an object", list: "an array", bool: "true or false"}.get(type(value), type(value).__name__)
    raise UserError(f"{where}: a message's content is {kind}, not text; give it as a string (or a list of "
                    "{type: text, text: ...} parts)")


def merge_turns(turns: Iterable[tuple[str, str]], roles: dict[str, str], where: str) -> list[Message]:
    """(speaker, text) pairs -> messages with roles; consecutive turns of one role become one message."""
    messages: list[Message] = []
    for speaker, text in turns:
        role = _role(str(speaker), roles)
        if role is None:
            raise UserError(f"{where}: speaker '{speaker}' has no role; map it with chat.roles, "
                            f"e.g. --set 'chat.roles={{{speaker}: assistant}}'")
        text = message_text(text, where)
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n" + text
        else:
            messages.append({"role": role, "content": text})
    return messages


def parse_transcript(text: str, roles: dict[str, str], where: str) -> list[Message]:
    """`Name: text` lines; a line without a speaker continues the turn before it."""
    turns: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        found = _SPEAKER_LINE.match(line)
        if found and (turns == [] or _role(found.group(1), roles) is not None):
            turns.append([found.group(1), found.group(2).strip()])
        elif turns:
            turns[-1][1] += "\n" + line.strip()
        else:
            raise UserError(f"{where}: a transcript line must start with a speaker name and a colon (\"Agent: ...\"); "
                            f"got {line.strip()[:60]!r}")
    return merge_turns(((speaker, text) for speaker, text in turns), roles, where)


def field_name(cfg: ChatConfig, name: str) -> str:
    """The record's field for one of the standard names (prompt, completion, chosen, ...), as mapped in chat.fields."""
    return cfg.fields.get(name, name)


def as_messages(value, role: str, cfg: ChatConfig, where: str) -> list[Message]:
    """A string as one turn of `role`, or a list of {role, content} messages as they are."""
    if isinstance(value, list):
        return merge_turns(((m.get("role", ""), m.get("content", "")) for m in value if isinstance(m, dict)), cfg.roles, where)
    return [{"role": role, "content": message_text(value, where)}]


def instruction_prompt(value: dict, cfg: ChatConfig) -> str | None:
    """Alpaca's user turn: the instruction, with the input (when there is one) under it."""
    instruction = lookup(value, field_name(cfg, "instruction"))
    if instruction is None:
        return None
    extra = lookup(value, field_name(cfg, "input"))
    return str(instruction).strip() + (f"\n\n{str(extra).strip()}" if extra not in (None, "") and str(extra).strip() else "")


def _has(value: dict, cfg: ChatConfig, *names: str) -> bool:
    return all(lookup(value, field_name(cfg, name)) is not None for name in names)


def parse_record(value: dict | str, cfg: ChatConfig, where: str) -> list[Message] | None:
    """One record in any of the formats -> messages; None when the record is not a conversation of that format."""
    kind = cfg.format
    if kind in ("auto", "transcript") and isinstance(value, str):
        return parse_transcript(value, cfg.roles, where)
    if not isinstance(value, dict):
        return None
    if kind in ("auto", "messages") and isinstance(value.get("messages"), list):
        return merge_turns(((m.get("role", ""), m.get("content", "")) for m in value["messages"] if isinstance(m, dict)), cfg.roles, where)
    if kind in ("auto", "sharegpt") and isinstance(value.get("conversations"), list):
        return merge_turns(((m.get("from", ""), m.get("value", "")) for m in value["conversations"] if isinstance(m, dict)), cfg.roles, where)
    if kind in ("auto", "prompt_completion") and _has(value, cfg, "prompt", "completion"):
        prompt = as_messages(lookup(value, field_name(cfg, "prompt")), "user", cfg, where)
        return prompt + as_messages(lookup(value, field_name(cfg, "completion")), "assistant", cfg, where)
    if kind in ("auto", "alpaca") and _has(value, cfg, "instruction", "output"):
        return [{"role": "user", "content": instruction_prompt(value, cfg)},
                {"role": "assistant", "content": message_text(lookup(value, field_name(cfg, "output")), where)}]
    return None


def skip_row(problem: UserError, on_error: str, report: DataReport) -> None:
    """A row that cannot be read (a speaker with no role, a transcript line without a speaker) stops prepare, or with
    data.on_error=skip is counted as a malformed row, as a row that is not valid JSON is."""
    if on_error != "skip":
        raise UserError(f"{problem}; or set data.on_error=skip to skip such rows") from None
    report.remove("malformed_row", str(problem))


def with_system(messages: list[Message], system_prompt: str | None) -> list[Message]:
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}] + messages
    return messages


def _table_row(value, cfg: ChatConfig) -> bool:
    return isinstance(value, dict) and cfg.conversation_field in value and cfg.speaker_field in value


def conversation_units(reader: DocumentReader, files: list[Path], cfg: ChatConfig, data: DataConfig, report: DataReport,
                       steps: list) -> Iterator[Unit]:
    """Each conversation, cleaned turn by turn, as a unit compared by its `role: content` lines.

    Records stream through; rows of the table format are held per conversation until their file ends,
    since a conversation's rows need not be adjacent.
    """
    for path in files:
        tables: OrderedDict[str, list] = OrderedDict()
        for record in reader.records([path]):
            where = f"{record.source}:{record.line}"
            if cfg.format in ("auto", "table") and _table_row(record.value, cfg):
                text = lookup(record.value, data.text_field)
                if text is None:
                    report.remove("missing_field", str(record.value)[:200])
                    continue
                key = str(record.value[cfg.conversation_field])
                tables.setdefault(key, []).append((record.value[cfg.speaker_field], text, where))
                continue
            try:
                messages = parse_record(record.value, cfg, where)
            except UserError as problem:
                skip_row(problem, reader.on_error, report)
                continue
            if messages is None:
                report.remove("not_a_conversation", str(record.value)[:200])
                continue
            yield from _cleaned(messages, cfg.system_prompt, report, steps)
        for turns in tables.values():
            try:
                messages = merge_turns(((speaker, text) for speaker, text, _ in turns), cfg.roles, turns[0][2])
            except UserError as problem:
                skip_row(problem, reader.on_error, report)
                continue
            yield from _cleaned(messages, cfg.system_prompt, report, steps)


def _cleaned(messages: list[Message], system_prompt: str | None, report: DataReport, steps: list) -> Iterator[Unit]:
    cleaned = []
    for message in with_system(messages, system_prompt):
        content = clean_one(str(message["content"]), steps, report)
        if content:
            cleaned.append({"role": message["role"], "content": content})
    key = "\n".join(f"{m['role']}: {m['content']}" for m in cleaned)
    if not any(m["role"] == "assistant" for m in cleaned):
        report.remove("no_assistant_turn", key or "(empty)")
        return
    yield Unit(key, cleaned)
