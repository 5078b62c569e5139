"""`tunesmith predict`: label every row of a CSV, TSV or JSONL file with a trained classifier, or score it with a reward
model, keeping all its columns."""

from __future__ import annotations

from pathlib import Path

from ..data.conversations import message_text
from ..data.read import lookup
from ..errors import UserError
from ..models import resolve_model
from ..tasks import read_task
from ..tasks.reward import RewardKind, RewardModel
from ..tasks.trained import Classifier
from .row_files import TABLE_FORMATS, check_output, read_numbered_rows, write_rows


def _text(value, source: Path, line: int, what: str = "the text") -> str:
    """A row's value as text ("" where it is missing), or one line naming the row where it is an object, a list or
    true/false."""
    try:
        return message_text(value, what)
    except UserError as exc:
        raise UserError(f"--input {source}:{line}: {exc}") from None


class LabelColumns:
    """A classifier's `prediction` and `p_<label>` for each row, from its text column (by default the one it was trained on)."""

    def __init__(self, spec: str, device_name: str, log):
        self.classifier = Classifier(spec, device_name, log)

    def columns(self, rows: list[dict], text_field: str | None, batch_size: int, source: Path, lines: list[int]) -> list[dict]:
        text_field = text_field or self.classifier.text_field
        found = [lookup(row, text_field) for row in rows]
        if rows and all(text is None for text in found):
            raise UserError(f"--input {source}: no row has the field '{text_field}' (fields: {', '.join(rows[0])}); pass --text-field")
        texts = [None if text is None else _text(text, source, line) for text, line in zip(found, lines)]
        texts = [text if text and text.strip() else None for text in texts]  # a blank cell is not scored, as on the page
        encoded = [None if text is None else self._encoded(text, source, line) for text, line in zip(texts, lines)]
        labels = self.classifier.labels
        out = []
        for p in self.classifier.probabilities_of(encoded, batch_size):
            added = {"prediction": None, **{f"p_{label}": None for label in labels}}
            if p is not None:
                added = {"prediction": labels[int(p.argmax())], **{f"p_{label}": round(float(v), 6) for label, v in zip(labels, p)}}
            out.append(added)
        return out

    def _encoded(self, text: str, source: Path, line: int) -> list[int]:
        try:
            return self.classifier.encode(text)
        except UserError as exc:
            raise UserError(f"--input {source}:{line}: {exc}") from None


class RewardColumns:
    """A reward model's `reward` for each row: a prompt and its answer (`completion`, or `chosen`) rendered as training
    rendered a pair, or else a text column scored as it is (`text`, or --text-field). A blank answer or text is not
    scored (an empty cell of a CSV file is blank, not an empty answer), as the page refuses one."""

    def __init__(self, spec: str, device_name: str, log):
        self.model = RewardModel(spec, device_name, log)

    def _field(self, name: str) -> str:
        return self.model.fields.get(name, name)

    def _pair(self, row: dict, source: Path, line: int) -> tuple | None:
        """The row's (prompt, answer), under the field names the model was trained with; None without a prompt field
        or a non-blank answer."""
        prompt = lookup(row, self._field("prompt"))
        if prompt is None:
            return None
        answers = (_text(lookup(row, self._field(name)), source, line, f"the {name}") for name in ("completion", "chosen"))
        return next(((prompt, text) for text in answers if text.strip()), None)

    def _has_fields(self, row: dict, text_field: str | None) -> bool:
        """Whether the row has a column to score: --text-field's, else `text` or a prompt with an answer column."""
        if text_field or lookup(row, "text") is not None:
            return lookup(row, text_field or "text") is not None
        answer = (lookup(row, self._field(name)) is not None for name in ("completion", "chosen"))
        return lookup(row, self._field("prompt")) is not None and any(answer)

    def _token_row(self, pair: tuple | None, text: str) -> list[int]:
        return self.model.text_row(text) if pair is None else self.model.pair_row(pair[0], pair[1])

    def columns(self, rows: list[dict], text_field: str | None, batch_size: int, source: Path, lines: list[int]) -> list[dict]:
        if rows and not any(self._has_fields(row, text_field) for row in rows):
            if text_field:
                raise UserError(f"--input {source}: no row has a '{text_field}' field (fields: {', '.join(rows[0])}); name "
                                "one of them with --text-field, or leave it out to score prompt and completion fields")
            raise UserError(f"--input {source}: no row has a 'text' field, nor prompt and completion fields "
                            f"(fields: {', '.join(rows[0])}); pass --text-field")
        pairs = [None if text_field else self._pair(row, source, line) for row, line in zip(rows, lines)]
        texts = [None if pair else _text(lookup(row, text_field or "text"), source, line)
                 for row, pair, line in zip(rows, pairs, lines)]
        token_rows = {}
        for i, (pair, text) in enumerate(zip(pairs, texts)):
            if pair is None and not text.strip():
                continue
            try:
                token_rows[i] = self._token_row(pair, text)
            except UserError as exc:
                raise UserError(f"--input {source}:{lines[i]}: {exc}") from None
        rewards: list[float | None] = [None] * len(rows)
        for i, reward in zip(token_rows, self.model.score(list(token_rows.values()), batch_size)):
            rewards[i] = round(float(reward), 6)
        return [{"reward": reward} for reward in rewards]


PREDICTORS = {RewardKind.name: RewardColumns}  # by the saved task's name; any other model is read as a classifier, which says what it is not


def predict_file(spec: str, input_path: Path, output_path: Path, text_field: str | None = None, batch_size: int = 16,
                 device_name: str = "auto", log=print) -> int:
    """Write every input row with the model's columns added (a classifier's `prediction` and `p_<label>`, a reward
    model's `reward`), in the input's order; returns the row count."""
    task = read_task(Path(resolve_model(spec, log=log).path))["task"]
    predictor = PREDICTORS.get(task, LabelColumns)(spec, device_name, log)
    check_output(output_path)
    rows, lines = read_numbered_rows(input_path, TABLE_FORMATS, log=log)
    if not rows:
        raise UserError(f"--input {input_path}: no rows to score (an empty file, or a header alone); give a file with rows")
    added = predictor.columns(rows, text_field, batch_size, input_path, lines)
    _warn_unscored(added, lines, input_path, log)
    replaced = sorted({name for row in rows for name in row} & {name for columns in added for name in columns})
    if replaced:
        log(f"warning: --input {input_path} has the column(s) {', '.join(replaced)}, which the output replaces with the "
            "model's; rename them in the input to keep both")
    out = [{**row, **columns} for row, columns in zip(rows, added)]
    write_rows(output_path, out)
    return len(out)


def _warn_unscored(added: list[dict], lines: list[int], source: Path, log) -> None:
    """One line naming the rows the model could not score (no text, or no answer to score), whose columns stay empty."""
    empty = [line for columns, line in zip(added, lines) if all(value is None for value in columns.values())]
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        log(f"warning: {len(empty):,} of {len(added):,} rows had nothing to score ({'line' if len(empty) == 1 else 'lines'} "
            f"{shown} of {source}); their columns are left empty")
