"""Preference records: pairs of a chosen and a rejected answer to one prompt, or single answers with a thumbs up or down.

Three shapes are read, each field name mappable through `chat.fields`:
- pairs, `{prompt, chosen, rejected}`, each a string or a list of messages;
- full transcripts, `{chosen, rejected}`, which share everything up to the last assistant turn
  ("Human: ... Assistant: ..."), with speakers mapped to roles as `chat.roles` does;
- unpaired feedback, `{prompt, completion, label}`, the label true/false, 1/0, up/down (or yes/no, good/bad).

A record that is none of these, a pair with identical answers, or an empty answer is dropped and counted
in the data report, never kept. A row that cannot be read at all (a JSON string where a record belongs, a message
whose speaker has no role) is a malformed row: it stops prepare, naming its line, or with data.on_error=skip is
skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..config import ChatConfig
from ..errors import UserError
from .conversations import Message, as_messages, field_name, merge_turns, parse_transcript, skip_row, with_system
from .formats import Record, file_format
from .pipeline import clean_one
from .read import DocumentReader, lookup
from .report import DataReport
from .units import Unit

# what each stored answer is: a pair's two answers are written one after the other, chosen first
REJECTED, DESIRABLE, UNDESIRABLE, CHOSEN = 2, 1, 0, 3
KL_ROW = -1  # a prompt with another example's answer: KTO's estimate of the divergence from the reference
JSON_FORMATS = (".jsonl", ".json")  # where a string in place of a record is one bad row, not a file of plain text

LABELS = {"true": True, "1": True, "up": True, "yes": True, "good": True, "positive": True, "thumbs_up": True, "👍": True,
          "false": False, "0": False, "down": False, "no": False, "bad": False, "negative": False, "thumbs_down": False, "👎": False}


@dataclass(frozen=True)
class Judged:
    """A prompt (as messages) and its judged answers: (chosen, rejected) or one (answer, label)."""

    prompt: list[Message]
    answers: tuple[tuple[str, int], ...]

    @property
    def paired(self) -> bool:
        return len(self.answers) == 2

    def key(self) -> str:
        """What de-duplication compares: the prompt and the answers with what they are."""
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in self.prompt)
        return prompt + "".join(f"\n[{code}] {text}" for text, code in self.answers)


def parse_label(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    return LABELS.get(str(value).strip().lower())


def _split_last_answer(messages: list[Message]) -> tuple[list[Message], str] | None:
    """A conversation's prompt (everything before its last turn) and that turn, when it is the assistant's."""
    if not messages or messages[-1]["role"] != "assistant":
        return None
    return messages[:-1], messages[-1]["content"]


def _conversation(value, cfg: ChatConfig, where: str) -> list[Message]:
    if isinstance(value, str):
        return parse_transcript(value, cfg.roles, where)
    return as_messages(value, "assistant", cfg, where)


def parse_judged(value, cfg: ChatConfig, where: str) -> Judged | str:
    """One record -> a Judged, or the reason it is dropped (a data-report step name)."""
    if not isinstance(value, dict):
        return "not_a_preference_record"
    get = {name: lookup(value, field_name(cfg, name)) for name in ("prompt", "chosen", "rejected", "completion", "label")}
    if get["chosen"] is not None and get["rejected"] is not None:
        if get["prompt"] is not None:
            prompt = as_messages(get["prompt"], "user", cfg, where)
            sides = [_split_last_answer(prompt + as_messages(get[name], "assistant", cfg, where)) for name in ("chosen", "rejected")]
        else:
            sides = [_split_last_answer(_conversation(get[name], cfg, where)) for name in ("chosen", "rejected")]
        if None in sides:
            return "no_final_answer"
        (prompt, chosen), (other_prompt, rejected) = sides
        if prompt != other_prompt:
            return "prompts_differ"
        return Judged(prompt, ((chosen, CHOSEN), (rejected, REJECTED)))
    if get["prompt"] is not None and get["completion"] is not None:
        if get["label"] is None:
            return "missing_field"
        label = parse_label(get["label"])
        if label is None:
            return "unknown_label"
        prompt = as_messages(get["prompt"], "user", cfg, where)
        split = _split_last_answer(prompt + as_messages(get["completion"], "assistant", cfg, where))
        if split is None:
            return "no_final_answer"
        return Judged(split[0], ((split[1], DESIRABLE if label else UNDESIRABLE),))
    return "missing_field"


def judged_units(reader: DocumentReader, files: list[Path], cfg: ChatConfig, report: DataReport, steps: list,
                 pairs_only: bool, method: str) -> Iterator[Unit]:
    """Each record's prompt and answers, cleaned, as a unit; what cannot be used is counted by its reason."""
    for record in reader.records(files):
        if isinstance(record.value, str) and file_format(Path(record.source)) not in JSON_FORMATS:
            raise UserError(f"{record.source}: preference data needs JSON lines or a table with prompt/chosen/rejected "
                            "or prompt/completion/label fields; plain text has no preferences")
        try:
            judged = _read_judged(record, cfg)
        except UserError as problem:
            skip_row(problem, reader.on_error, report)
            continue
        if isinstance(judged, str):
            report.remove(judged, str(record.value)[:200])
            continue
        cleaned = _cleaned(judged, cfg.system_prompt, report, steps)
        if isinstance(cleaned, str):
            report.remove(cleaned, judged.key())
        elif pairs_only and not cleaned.paired:
            report.remove(f"unpaired_for_{method}", cleaned.key())
        else:
            yield Unit(cleaned.key(), cleaned)


def _read_judged(record: Record, cfg: ChatConfig) -> Judged | str:
    """A record as judged answers, or why it is dropped; a UserError for a row that cannot be read at all."""
    where = f"{record.source}:{record.line}"
    if isinstance(record.value, str):
        raise UserError(f"{where}: a JSON string where a preference record belongs; each record is an object with "
                        "prompt/chosen/rejected or prompt/completion/label fields")
    return parse_judged(record.value, cfg, where)


def _cleaned(judged: Judged, system_prompt: str | None, report: DataReport, steps: list) -> Judged | str:
    prompt = []
    for message in with_system(judged.prompt, system_prompt):
        content = clean_one(str(message["content"]), steps, report)
        if content:
            prompt.append({"role": message["role"], "content": content})
    prompt = merge_turns(((m["role"], m["content"]) for m in prompt), {}, "")
    answers = tuple((clean_one(str(text), steps, report), code) for text, code in judged.answers)
    if not prompt or prompt[-1]["role"] == "assistant":
        return "no_prompt"
    if any(not text for text, _ in answers):
        return "empty_answer"
    if len(answers) == 2 and answers[0][0] == answers[1][0]:
        return "identical_answers"
    return Judged(prompt, answers)
