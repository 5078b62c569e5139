"""Chat: the chat template, the assistant-only loss mask, the end-of-turn stop, and the chat task.

The conversations themselves come from the chat log parsers in `data/conversations.py`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import CleanConfig, DataConfig, MonitorConfig, RunConfig
from ..data.clean import transforms
from ..data.conversations import Message, conversation_units
from ..data.report import DataReport
from ..data.units import FIELDS_HINT, Encoded, Unit
from ..errors import UserError
from ..models import load_tokenizer
from .base import Task, TaskKind, check_both_sides
from .view import TaskView

# used when the model has no template of its own; its two markers become special tokens
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]


def special_texts(tokenizer) -> set[str]:
    """The texts the tokenizer reads as special tokens wherever they appear, unless told to split them."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials = {token.content for token in added.values() if getattr(token, "special", False)} | set(tokenizer.all_special_tokens)
    return {text for text in specials if text}


def control_texts(tokenizer) -> list[str]:
    """The special tokens' texts that shape a conversation, longest first: those the chat template writes (`<|im_start|>`),
    and the start and end of text. Others (`<filename>` in a code model's vocabulary) are left to mean what they say."""
    written = render(tokenizer, [{"role": "user", "content": "?"}, {"role": "assistant", "content": "."}])
    used = {text for text in special_texts(tokenizer) if text in written} | {tokenizer.eos_token, tokenizer.bos_token}
    return sorted((text for text in used if text), key=len, reverse=True)


def held_text(messages: list[Message], texts) -> str | None:
    """The first of `texts` that a message's content holds, or None."""
    return next((text for text in texts for message in messages if text in str(message["content"])), None)


class ControlTextGuard:
    """Leaves out an example whose messages hold the text of a control token its template writes (`control_texts`):
    rendered, it would be read as a real turn boundary or end of text. Counts them, and warns in the data report."""

    def __init__(self):
        self.markers: list[str] | None = None
        self.held: dict[str, int] = {}

    def holds(self, tokenizer, messages: list[Message], key: str, report: DataReport) -> bool:
        if self.markers is None:
            self.markers = control_texts(tokenizer)
        held = held_text(messages, self.markers)
        if held is None:
            return False
        self.held[held] = self.held.get(held, 0) + 1
        report.remove("control_token_text", key)
        return True

    @property
    def count(self) -> int:
        return sum(self.held.values())

    def finish(self, meta: dict, report: DataReport, what: str) -> None:
        if self.held:
            meta["holding_markers"] = self.count
            report.warnings.append(f"{self.count} {what} were left out: a message holds the text of one of the tokenizer's "
                                   f"control tokens ({next(iter(self.held))!r}), which the chat template would read as a real "
                                   "turn boundary or end of text; remove it from the data to keep them")


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


def conversation_ids(tokenizer, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
    """A conversation's token ids as its chat template renders it, each message's content read as plain text: a
    message that holds `<|im_start|>assistant` (any special token's text) opens no turn. Where no message holds such a
    text, the ids are the whole rendered text's; otherwise the template is rendered around a placeholder for each
    content and the two kinds of piece are tokenized apart (a template that rewrites the contents is refused then)."""
    held = held_text(messages, special_texts(tokenizer))
    if held is None:
        return tokenizer(render(tokenizer, messages, add_generation_prompt), add_special_tokens=False).input_ids
    holders = [f"\ue000{index}\ue001" for index in range(len(messages))]
    shaped = render(tokenizer, [{**message, "content": holder} for message, holder in zip(messages, holders)], add_generation_prompt)
    pieces = re.split("(\ue000\\d+\ue001)", shaped)  # template text at even places, a placeholder at odd ones
    if pieces[1::2] != holders:
        raise UserError(f"a message holds the text of one of the model's special tokens ({held!r}), and this model's chat "
                        "template rewrites messages, so it cannot be kept as text; remove it from the message")
    ids: list[int] = []
    for index, piece in enumerate(pieces):
        if index % 2:
            text = str(messages[holders.index(piece)]["content"])
            ids += tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False).input_ids
    return ids


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


def _encode_spans(tokenizer, text: str, spans: list[tuple[int, int]], elsewhere: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `text`, and a mask that is 1 on the tokens starting inside `spans` and `elsewhere` on the others."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    starts = np.asarray([start for start, _ in encoded["offset_mapping"]], dtype=np.int64)
    mask = np.full(len(ids), elsewhere, dtype=np.uint8)
    for begin, end in spans:
        mask[(starts >= begin) & (starts < end)] = 1
    return ids, mask


def encode_conversation(tokenizer, messages: list[Message], train_on_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and the loss mask: 1 on assistant tokens and their end marker; with `train_on_prompt`, 2 on the others.

    Every non-zero position carries loss; the 1s still say where the answers are (what a sample prompt stops before).
    """
    text, spans = assistant_spans(tokenizer, messages)
    return _encode_spans(tokenizer, text, spans, 2 if train_on_prompt else 0)


def encode_answer(tokenizer, prompt: list[Message], answer: str) -> tuple[np.ndarray, np.ndarray]:
    """A prompt and one answer as the template renders them, the mask on that answer and its end marker only."""
    text, spans = assistant_spans(tokenizer, prompt + [{"role": "assistant", "content": answer}])
    return _encode_spans(tokenizer, text, spans[-1:])


def split_turns(tokenizer, messages: list[Message], block_size: int,
                train_on_prompt: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
    """Pieces of at most `block_size` tokens, cut where a new exchange (a non-assistant turn) begins.

    Each piece keeps the conversation's system message. An exchange longer than a block on its own
    is truncated (the flag says so).
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]

    def fits(piece: list[Message]) -> bool:  # counted on the text alone: locating the answers costs a render per turn
        return len(tokenizer(render(tokenizer, piece), add_special_tokens=False).input_ids) <= block_size

    if fits(messages):
        yield (*encode_conversation(tokenizer, messages, train_on_prompt), False)
        return
    cuts = [i for i, m in enumerate(turns) if m["role"] != "assistant" and i > 0] + [len(turns)]
    start = 0
    while start < len(turns):
        ends = [end for end in cuts if end > start]
        end = ends[_last_true(len(ends), lambda i: fits(system + turns[start:ends[i]]))]
        ids, mask = encode_conversation(tokenizer, system + turns[start:end], train_on_prompt)
        if (mask[:block_size] == 1).any():  # a piece whose answer was cut off entirely teaches nothing
            yield ids[:block_size], mask[:block_size], len(ids) > block_size
        start = end


def _last_true(count: int, holds) -> int:
    """The last index below `count` where `holds`, for a condition that holds up to some index and not after; 0 where it
    holds nowhere. Found by doubling then halving, so a long conversation's pieces cost a few renders each, not one per
    exchange."""
    if count == 1 or not holds(0):
        return 0
    good, step = 0, 1
    while good + step < count and holds(good + step):
        good, step = good + step, step * 2
    bad = min(good + step, count)  # the first index known not to hold, or past the end
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if holds(middle) else (good, middle)
    return good


def chat_tokenizer(resolved, log=print):
    """The model's tokenizer, with ChatML added when it has no chat template of its own."""
    tokenizer = load_tokenizer(resolved)
    if ensure_chat_template(tokenizer):
        log("the model has no chat template: using ChatML, with <|im_start|> and <|im_end|> added as special tokens")
    return tokenizer


def chat_sample_prompts(monitor: MonitorConfig, val_dataset, tokenizer) -> list[str]:
    """Configured prompts as one user turn each, or the validation conversations up to their first assistant turn."""
    if monitor.sample_prompts is not None:
        return [render(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True) for p in monitor.sample_prompts]
    count = min(monitor.sample_count, len(val_dataset))
    return [tokenizer.decode(val_dataset.prompt_ids(i).tolist()) for i in range(count)]


def chat_reference_pairs(val_dataset, tokenizer, count: int) -> list[tuple[list[int], str]]:
    """Each validation conversation up to its first answer, and that answer as the reference."""
    pairs = []
    for index in range(len(val_dataset)):
        pair = val_dataset.reference_pair(index)
        if pair is not None:
            pairs.append((pair[0].tolist(), tokenizer.decode(pair[1].tolist(), skip_special_tokens=True).strip()))
        if len(pairs) == count:
            break
    return pairs


class ChatUnits:
    """Conversations for `prepare`: each one a unit, its assistant turns the targets, cut into pieces that fit."""

    layout = "examples"
    unit_words = "conversations"
    fields_hint = FIELDS_HINT

    def __init__(self, cfg: RunConfig):
        self.cfg, self.truncated, self.control = cfg, 0, ControlTextGuard()

    def cache_settings(self) -> dict:
        return {"task": "chat", "chat": self.cfg.chat.model_dump(mode="json")}

    def begin(self, reader, files: list[Path]) -> None:
        pass

    def units(self, reader, files: list[Path], data: DataConfig, clean: CleanConfig, report: DataReport) -> Iterator[Unit]:
        return conversation_units(reader(report), files, self.cfg.chat, data, report, transforms(clean))

    def encode(self, units: list[Unit], tokenizer, data: DataConfig, clean: CleanConfig, report: DataReport) -> list[Encoded]:
        encoded = []
        for unit in units:
            if self.control.holds(tokenizer, unit.value, unit.key, report):
                continue
            pieces = []
            for ids, mask, truncated in split_turns(tokenizer, unit.value, data.block_size, self.cfg.chat.train_on_prompt):
                self.truncated += truncated
                pieces.append((ids, mask, -1))
            if not pieces:  # no exchange of it leaves room for its answer in a block
                report.remove("answer_beyond_block_size", unit.key)
                continue
            encoded.append(Encoded(unit, np.concatenate([ids for ids, _, _ in pieces]), pieces, [len(p[0]) for p in pieces]))
        return encoded

    def finish(self, train, val, data: DataConfig, report: DataReport, eval_only: bool) -> dict:
        check_both_sides(train, val, "examples (conversation pieces)", eval_only)
        if not val.targets:
            held = self.control.count
            raise UserError("the validation conversations have no assistant tokens; " + (
                f"{held} conversations were left out for holding a control token's text, see data_report.json" if held else
                "check chat.roles"))
        meta = {"task": "chat", "targets": {"train": train.targets, "val": val.targets},
                "examples_are": " (conversations or their pieces)"}
        self.control.finish(meta, report, "conversations")
        if self.truncated:
            meta["truncated"] = self.truncated
            report.warnings.append(f"{self.truncated} examples were longer than data.block_size={data.block_size} "
                                   "and were truncated; raise data.block_size to keep them whole")
        return meta


class ChatTask(Task):
    """Conversations; the loss falls on the assistant turns, each ending at the template's end-of-turn marker."""

    target_words = "assistant tokens"
    prompts_rendered = True

    def spec(self, tokenizer) -> dict:
        return {"task": self.name, "end_of_turn": end_of_turn(tokenizer)}

    def sample_prompts(self, monitor: MonitorConfig, val_dataset, tokenizer) -> list[str]:
        return chat_sample_prompts(monitor, val_dataset, tokenizer)

    def sample_stops(self, tokenizer) -> list[int]:
        return stop_token_ids(tokenizer)

    def reference_pairs(self, val_dataset, tokenizer, count: int, new_tokens: int) -> list[tuple[list[int], str]]:
        return chat_reference_pairs(val_dataset, tokenizer, count)


class ChatKind(TaskKind):
    """Chat as the config decides it: the chat template's tokenizer and the conversations' preparation."""

    builds = ChatTask
    distills = True
    name = "chat"
    learns = "conversations and instructions, the loss on the assistant turns"
    section = "chat"
    noisy_embeddings = True

    def preparer(self, cfg: RunConfig, saved: dict | None = None) -> ChatUnits:
        return ChatUnits(cfg)

    def tokenizer(self, resolved, log=print):
        return chat_tokenizer(resolved, log)


class ChatView(TaskView):
    """How a chat run's results read."""

    name = "chat"
    loss_scope = "assistant-token "
    description = "A chat model (assistant turns learned)"
    try_it = "chat"
