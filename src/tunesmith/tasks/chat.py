"""Chat: conversations from several log formats, the chat template, and the assistant-only loss mask."""

from __future__ import annotations

import re
from typing import Iterable, Iterator

import numpy as np

from ..config import ChatConfig
from ..errors import UserError

# used when the model has no template of its own; its two markers become special tokens
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]

KNOWN_ROLES = {
    "system": "system",
    "user": "user", "human": "user", "customer": "user", "client": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "agent": "assistant", "model": "assistant",
    "support": "assistant",
}
_SPEAKER_LINE = re.compile(r"^\s*([^:\n]{1,40}?)\s*:\s?(.*)$")

Message = dict[str, str]


def ensure_chat_template(tokenizer) -> bool:
    """Give the tokenizer a ChatML template (and its markers as special tokens) when it has none; True when added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.add_special_tokens({"extra_special_tokens": CHATML_TOKENS}, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    return True


def end_of_turn(tokenizer) -> str:
    """The marker the template puts after an assistant turn (what generation stops at)."""
    probe = "tunesmith-probe"
    text = render(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}])
    after = text[text.rindex(probe) + len(probe):].strip()
    for token in sorted(tokenizer.all_special_tokens, key=len, reverse=True):
        if token and after.startswith(token):
            return token
    return tokenizer.eos_token


def stop_token_ids(tokenizer, model_dir=None) -> list[int]:
    """What generation stops at: EOS, and for a chat model the end-of-turn marker (as saved with it, or found in its template)."""
    from pathlib import Path

    from . import read_task

    stop = [tokenizer.eos_token_id]
    if getattr(tokenizer, "chat_template", None):
        saved = read_task(Path(model_dir)).get("end_of_turn") if model_dir else None
        stop.append(tokenizer.convert_tokens_to_ids(saved or end_of_turn(tokenizer)))
    return list(dict.fromkeys(stop))


def render(tokenizer, messages: list[Message], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raises its own error types for a template that rejects the roles
        raise UserError(f"the chat template rejected a conversation ({str(exc).splitlines()[0]}); "
                        "check chat.roles (roles must be system, user or assistant)") from None


def assistant_spans(tokenizer, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss: each assistant turn and its end marker.

    A span runs from where the template would start generating to the end of that turn, trailing
    whitespace excluded, so the end-of-turn token is learned and the next turn's header is not.
    """
    full = render(tokenizer, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        upto = render(tokenizer, messages[: index + 1])
        if not full.startswith(upto) or not upto.startswith(before):
            raise UserError("the model's chat template does not render conversations incrementally, so the assistant "
                            "turns cannot be located; use a model with a standard template or one without (ChatML is then added)")
        spans.append((len(before), len(upto.rstrip())))
    return full, spans


def encode_conversation(tokenizer, messages: list[Message]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and the loss mask (1 on assistant tokens and their end marker)."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    starts = np.asarray([start for start, _ in encoded["offset_mapping"]], dtype=np.int64)
    mask = np.zeros(len(ids), dtype=np.uint8)
    for begin, end in spans:
        mask[(starts >= begin) & (starts < end)] = 1
    return ids, mask


def split_turns(tokenizer, messages: list[Message], block_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
    """Pieces of at most `block_size` tokens, cut where a new exchange (a non-assistant turn) begins.

    Each piece keeps the conversation's system message. An exchange longer than a block on its own
    is truncated (the flag says so).
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    ids, mask = encode_conversation(tokenizer, messages)
    if len(ids) <= block_size:
        yield ids, mask, False
        return
    cuts = [i for i, m in enumerate(turns) if m["role"] != "assistant" and i > 0] + [len(turns)]
    start = 0
    while start < len(turns):
        best = None
        for end in cuts:
            if end <= start:
                continue
            piece = encode_conversation(tokenizer, system + turns[start:end])
            if len(piece[0]) > block_size and best is not None:
                break
            best = (end, piece)
            if len(piece[0]) > block_size:
                break
        end, (ids, mask) = best
        if mask[:block_size].any():  # a piece whose answer was cut off entirely teaches nothing
            yield ids[:block_size], mask[:block_size], len(ids) > block_size
        start = end


def _role(name: str, roles: dict[str, str]) -> str | None:
    if name in roles:
        return roles[name]
    lowered = {key.lower(): value for key, value in roles.items()}
    return lowered.get(name.strip().lower(), KNOWN_ROLES.get(name.strip().lower()))


def merge_turns(turns: Iterable[tuple[str, str]], roles: dict[str, str], where: str) -> list[Message]:
    """(speaker, text) pairs -> messages with roles; consecutive turns of one role become one message."""
    messages: list[Message] = []
    for speaker, text in turns:
        role = _role(str(speaker), roles)
        if role is None:
            raise UserError(f"{where}: speaker '{speaker}' has no role; map it with chat.roles, "
                            f"e.g. --set 'chat.roles={{{speaker}: assistant}}'")
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n" + str(text)
        else:
            messages.append({"role": role, "content": str(text)})
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
    return None


def with_system(messages: list[Message], system_prompt: str | None) -> list[Message]:
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}] + messages
    return messages
