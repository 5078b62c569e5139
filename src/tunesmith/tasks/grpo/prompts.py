"""GRPO's data: prompts, each stored as the tokens the model continues, beside its own form (text or messages) for the
rewards, which judge the prompt and the completion as a person wrote them.

Three shapes are read: plain text files (one prompt per line), records with a prompt field (`chat.fields` maps
its name; a string, or a list of messages), and conversations in any format the chat task reads (the prompt is
the conversation up to its last assistant turn, which is dropped). A string prompt is continued as it stands;
a list of messages is rendered through the model's chat template, ending in the assistant's turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ...config import CleanConfig, DataConfig, RunConfig
from ...data.clean import transforms
from ...data.conversations import Message, as_messages, field_name, parse_record, skip_row, with_system
from ...data.examples import Examples
from ...data.formats import file_format
from ...data.pipeline import clean_one
from ...data.read import lookup
from ...data.report import DataReport
from ...data.units import Encoded, Unit
from ...errors import UserError
from ..base import check_both_sides
from ..chat import ControlTextGuard, render

PROMPTS_FILE = "prompts.json"  # each stored prompt's own form, indexed by the example's class
TEXT_FORMATS = (".txt", ".md")
Prompt = str | list[Message]


def prompt_key(prompt: Prompt) -> str:
    """What de-duplication compares."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def _record_prompt(value, cfg: RunConfig, where: str) -> tuple[Prompt | None, str | None]:
    """A record's prompt, or None and the reason it is dropped (a data-report step name)."""
    if isinstance(value, str):
        return value, None
    if not isinstance(value, dict):
        return None, "not_a_prompt_record"
    prompt = lookup(value, field_name(cfg.chat, "prompt"))
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, list):
        return as_messages(prompt, "user", cfg.chat, where), None
    messages = parse_record(value, cfg.chat, where)
    if not messages:
        return None, "missing_field"
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return (messages, None) if messages else (None, "no_prompt")


def _cleaned(prompt: Prompt, cfg: RunConfig, steps: list, report: DataReport) -> Prompt | None:
    if isinstance(prompt, str):
        return clean_one(prompt, steps, report) or None
    kept = [{"role": m["role"], "content": text} for m in with_system(prompt, cfg.chat.system_prompt)
            if (text := clean_one(str(m["content"]), steps, report))]
    return kept if kept and kept[-1]["role"] != "assistant" else None


def prompt_units(reader, files: list[Path], cfg: RunConfig, clean: CleanConfig, report: DataReport) -> Iterator[Unit]:
    steps = transforms(clean)
    for record in reader.records(files):
        where = f"{record.source}:{record.line}"
        if isinstance(record.value, str) and file_format(Path(record.source)) in TEXT_FORMATS:
            found: list[Prompt] = [line for line in record.value.splitlines() if line.strip()]
            report.read += len(found) - 1  # each line is a prompt read, where the reader counted the document once
        else:
            try:
                prompt, reason = _record_prompt(record.value, cfg, where)
            except UserError as problem:
                skip_row(problem, reader.on_error, report)
                continue
            if reason is not None:
                report.remove(reason, str(record.value)[:200])
                continue
            found = [prompt]
        for prompt in found:
            cleaned = _cleaned(prompt, cfg, steps, report)
            if cleaned is None:
                report.remove("empty_prompt", prompt_key(prompt)[:200])
                continue
            yield Unit(prompt_key(cleaned), cleaned)


def prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    """The tokens the model continues: a string as it stands (with the tokenizer's start token; a special token's text in
    it is text), messages through the chat template with the assistant's turn opened."""
    if isinstance(prompt, str):
        return tokenizer(prompt, split_special_tokens=True)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("prompts given as messages need a model with a chat template, and this one has none; "
                        "give plain-text prompts (a prompt field holding a string, or a .txt file) or use a chat model")
    return tokenizer(render(tokenizer, prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"]


class PromptUnits:
    """Prompts for `prepare`: one stored example per prompt, no targets; its class indexes the prompt's own form."""

    layout = "examples"
    unit_words = "prompts"
    fields_hint = ("each record needs a prompt field (a string or a list of messages; map another name with "
                   "chat.fields: {prompt: question}) or a conversation; a .txt file holds one prompt per line")

    def __init__(self, cfg: RunConfig, room: int):
        """`room`: the longest prompt kept, so that grpo.max_new_tokens still fit in data.block_size."""
        self.cfg, self.room, self.control = cfg, room, ControlTextGuard()
        self.forms: list[Prompt] = []

    def cache_settings(self) -> dict:
        return {"task": "grpo", "chat": self.cfg.chat.model_dump(mode="json"), "room": self.room}

    def begin(self, reader, files: list[Path]) -> None:
        pass

    def units(self, reader, files: list[Path], data: DataConfig, clean: CleanConfig, report: DataReport) -> Iterator[Unit]:
        return prompt_units(reader(report), files, self.cfg, clean, report)

    def encode(self, units: list[Unit], tokenizer, data: DataConfig, clean: CleanConfig, report: DataReport) -> list[Encoded]:
        encoded = []
        for unit in units:
            ids = np.asarray(prompt_ids(tokenizer, unit.value), dtype=np.int64)
            if not isinstance(unit.value, str) and self.control.holds(tokenizer, unit.value, unit.key[:200], report):
                continue
            if len(ids) == 0:
                report.remove("empty_prompt", unit.key[:200])
                continue
            if len(ids) > self.room:
                report.remove("prompt_beyond_block_size", unit.key[:200])
                continue
            self.forms.append(unit.value)
            encoded.append(Encoded(unit, ids, [(ids, np.zeros(len(ids), dtype=np.uint8), len(self.forms) - 1)], [len(ids)]))
        return encoded

    def finish(self, train, val, data: DataConfig, report: DataReport, eval_only: bool) -> dict:
        check_both_sides(train, val, "prompts", eval_only)
        (Path(train.directory) / PROMPTS_FILE).write_text(json.dumps(self.forms, ensure_ascii=False))
        meta = {"task": "grpo", "prompts": {"train": train.written, "val": val.written}, "examples_are": " (prompts)"}
        self.control.finish(meta, report, "prompts")
        return meta


class Prompts:
    """The prompts of one split: their tokens and their own forms, by index."""

    def __init__(self, examples: Examples, forms: list[Prompt]):
        self.examples = examples
        self.forms = forms

    def __len__(self) -> int:
        return len(self.examples)

    def length(self, index: int) -> int:
        return self.examples.length(index)

    @property
    def num_tokens(self) -> int:
        return int(sum(self.examples.length(i) for i in range(len(self.examples))))

    def ids(self, index: int) -> list[int]:
        return np.asarray(self.examples.ids(index)).tolist()

    def batch(self, indices: list[int]):
        """The prompts' tokens as a batch with no targets (`prepare --show` prints them: the completions are sampled)."""
        return self.examples.batch(indices)

    def form(self, index: int) -> Prompt:
        return self.forms[int(self.examples.classes[index])]


def read_prompts(prepared, split: str) -> Prompts:
    path = Path(prepared.directory) / PROMPTS_FILE
    try:
        forms = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{path} is missing or damaged; prepare the data again (delete {prepared.directory})") from None
    return Prompts(prepared.split(split), forms)
