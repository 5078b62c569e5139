"""`tunesmith generate --input FILE --output FILE`: completions for every row of a prompt file, in batches.

Each output row is its input row, every column kept, with the sample index, the generated text, why it
ended (`stop` or `length`, or `error` with the reason) and its token count; `n` rows per prompt, in the
input's order. With a reference column, ROUGE-L and chrF score each row, and the summary (beside the
output, `<output>.summary.json`) holds the corpus figures with the run's speed and settings.

Rows are journaled as they finish (`<output>.progress.jsonl`), so an interrupted run, rerun with the same
model, input and settings, skips the rows it finished; the output itself appears whole, at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from ..data.read import as_text, lookup
from ..errors import UserError
from ..models import context_length, longest_token
from ..rundir.durable import write_atomically
from ..rundir.fingerprint import file_sha256
from ..rundir.folder import read_json_lines
from .generation import Completion, SamplingOptions, default_stop_ids, encode_prompt, generate_many
from .row_files import TABLE_FORMATS, check_output, read_rows, write_rows

OUTPUT_COLUMNS = ("sample", "generated", "finish_reason", "tokens", "error")
SCORE_COLUMNS = ("rouge_l", "chrf")


def _encoded(tokenizer, prompt: str, chat: bool, input_path: Path, row: int) -> list[int]:
    try:
        return encode_prompt(tokenizer, prompt, chat)
    except UserError as exc:
        raise UserError(f"--input {input_path}: row {row + 1}: {exc}") from None


def _refused(prompt: str | None, prompt_field: str, model, tokenizer, n: int) -> list[Completion] | None:
    """A row's error completions where it has no prompt, or one longer than the model's context can spell (refused
    before it is tokenized: a row of megabytes would take gigabytes to tokenize); None for a row to generate."""
    context = context_length(model.config)
    if prompt is None:
        error = f"the row has no '{prompt_field}' field"
    elif context and len(prompt) > context * longest_token(tokenizer):
        error = (f"the prompt is {len(prompt):,} characters, more than the model's context of {context:,} tokens can spell; "
                 "shorten it")
    else:
        return None
    return [Completion(finish_reason="error", error=error) for _ in range(n)]


def summary_path(output: Path) -> Path:
    return output.with_name(f"{output.name}.summary.json")  # out.jsonl and out.csv are two outputs, each its own summary


class Journal:
    """The finished rows of one `generate --input` run, one JSON line each after a line naming the run's identity."""

    def __init__(self, output_path: Path, identity: dict):
        self.path = output_path.with_name(output_path.name + ".progress.jsonl")
        self.identity = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.handle = None

    def take(self, output_path: Path) -> None:
        """Hold the journal for this process (an OS lock, dropped however it ends): a second `generate` into the same
        --output is refused before it reads or truncates anything."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)  # as write_rows makes the output's folder
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            raise UserError(f"{self.path} is a link, a folder or a special file, not a generate journal; move it, or name "
                            "another --output")
        self.handle = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644), "a",
                                encoding="utf-8")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise UserError(f"--output {output_path}: another generate is writing it now ({self.path} is in use); "
                            "wait for it, or name another --output") from None

    def finished(self) -> dict[int, list[Completion]]:
        """The rows an earlier run with the same identity finished; none when there is no journal. Another run's journal,
        or a file that is none, is refused: its rows are hours of work a changed flag must not drop."""
        lines, _ = read_json_lines(self.path)  # a line torn by a kill is left out, and its row runs again
        if self.path.stat().st_size and (not lines or "identity" not in lines[0]):
            raise UserError(f"{self.path} is not a generate journal; move it, or name another --output")
        if not lines:
            return {}
        if lines[0]["identity"] != self.identity:
            raise UserError(f"{self.path} holds {len(lines) - 1} rows of an interrupted generate with another model, input or "
                            "settings; rerun with those to continue it, delete the file to start over, or name another --output")
        return {line["row"]: [Completion(**c) for c in line["completions"]] for line in lines[1:] if "row" in line}

    def open(self, resuming: bool) -> None:
        if not resuming:
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.write(json.dumps({"identity": self.identity}) + "\n")
            self.handle.flush()

    def add(self, row: int, completions: list[Completion]) -> None:
        self.handle.write(json.dumps({"row": row, "completions": [asdict(c) for c in completions]}) + "\n")
        self.handle.flush()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def summary_lines(summary: dict) -> list[str]:
    reasons = ", ".join(f"{count:,} {reason}" for reason, count in summary["finish_reasons"].items())
    lines = []
    if summary["resumed_rows"]:
        lines.append(f"resumed: {summary['resumed_rows']:,} rows were finished by an interrupted run with the same settings")
    samples, rows = summary["samples"], summary["rows"]
    lines.append(f"wrote {samples:,} completion{'s' if samples != 1 else ''} for {rows:,} row{'s' if rows != 1 else ''} "
                 f"to {summary['output']} ({reasons}; "
                 f"{summary['generated_tokens']:,} tokens in {summary['seconds']:.1f} s, {summary['tokens_per_second'] or 0:,.0f} tokens/s)")
    if summary["metrics"]:
        metrics = summary["metrics"]
        lines.append(f"against '{summary['reference_field']}' ({metrics['scored']:,} completions): ROUGE-L {metrics['rouge_l']:.2f}, "
                     f"chrF {metrics['chrf']:.2f}")
    return lines + [f"summary: {summary_path(Path(summary['output']))}"]


def check_paths(input_path: Path, output_path: Path) -> None:
    """The input exists and the output and its summary do not: checked before the model is loaded."""
    if not input_path.is_file():
        raise UserError(f"--input {input_path}: " + ("a folder; name a file" if input_path.is_dir() else "not found"))
    check_output(output_path)
    if summary_path(output_path).exists():
        raise UserError(f"{summary_path(output_path)} exists; name a new --output (nothing is overwritten)")


def _prompts(rows: list[dict], field: str, path: Path) -> list[str | None]:
    prompts = [lookup(row, field) for row in rows]
    if all(prompt is None for prompt in prompts):
        raise UserError(f"--input {path}: no row has the field '{field}' (fields: {', '.join(rows[0])}); pass --prompt-field")
    return [None if prompt is None else as_text(prompt) for prompt in prompts]


def _check_columns(rows: list[dict], reference_field: str | None, path: Path) -> None:
    taken = set(OUTPUT_COLUMNS) | (set(SCORE_COLUMNS) if reference_field else set())
    clash = sorted(taken & {key for row in rows for key in row})
    if clash:
        raise UserError(f"--input {path} has the column(s) {', '.join(clash)}, which the output adds; rename them")
    if reference_field and all(lookup(row, reference_field) is None for row in rows):
        raise UserError(f"--input {path}: no row has the reference field '{reference_field}'")


def _output_rows(rows: list[dict], results: list[list[Completion]]) -> list[dict]:
    out = []
    for row, completions in zip(rows, results):
        for sample, completion in enumerate(completions):
            added = {"sample": sample, "generated": completion.text, "finish_reason": completion.finish_reason,
                     "tokens": completion.tokens}
            out.append({**row, **added, **({"error": completion.error} if completion.error else {})})
    return out


def _score(out: list[dict], reference_field: str) -> dict:
    """Adds each row's scores in place; returns the corpus figures over the rows that have a reference."""
    from .text_metrics import corpus_scores, sentence_scores

    scored = [row for row in out if lookup(row, reference_field) is not None and row["finish_reason"] != "error"]
    references = [as_text(lookup(row, reference_field)) for row in scored]
    for row, scores in zip(scored, sentence_scores([row["generated"] for row in scored], references)):
        row.update(scores)
    return corpus_scores([row["generated"] for row in scored], references)


def generate_file(model, tokenizer, input_path: Path, output_path: Path, options: SamplingOptions, prompt_field: str = "prompt",
                  reference_field: str | None = None, max_batch: int = 16, show_progress: bool = True, model_name: str = "",
                  log=print) -> dict:
    """Write the completions of every row of `input_path` to `output_path`; returns the summary, also written beside it.

    Rows finished by an interrupted run with the same `model_name`, input file and settings are taken from its journal.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    options.check()
    check_paths(input_path, output_path)
    rows = read_rows(input_path, TABLE_FORMATS + (".txt",), prompt_field, log)
    if not rows:
        raise UserError(f"--input {input_path}: no rows")
    prompts = _prompts(rows, prompt_field, input_path)
    _check_columns(rows, reference_field, input_path)
    journal = Journal(output_path, {"model": model_name or getattr(model, "name_or_path", ""), "input": file_sha256(input_path),
                                    "prompt_field": prompt_field, "settings": asdict(options)})
    results = [_refused(prompt, prompt_field, model, tokenizer, options.n) for prompt in prompts]
    journal.take(output_path)
    try:
        resumed = journal.finished()
        for row, completions in resumed.items():
            results[row] = completions
        todo = [row for row, result in enumerate(results) if result is None]
        encoded = [_encoded(tokenizer, prompts[row], options.chat, input_path, row) for row in todo]
        journal.open(resuming=bool(resumed))
        started = time.perf_counter()
        with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not show_progress,
                      console=Console(stderr=True), transient=True) as progress:
            bar = progress.add_task("rows", total=len(todo))

            def finished(position: int, completions: list[Completion]) -> None:
                journal.add(todo[position], completions)
                progress.advance(bar)

            done = generate_many(model, tokenizer, encoded, options, default_stop_ids(model, tokenizer, options.chat), max_batch,
                                 on_done=finished, keys=todo)
        seconds = time.perf_counter() - started
        for row, completions in zip(todo, done):
            results[row] = completions
        out = _output_rows(rows, results)
        metrics = _score(out, reference_field) if reference_field else {}
        tokens = sum(row["tokens"] for row in out)
        new_tokens = sum(c.tokens for completions in done for c in completions)
        summary = {"input": str(input_path), "output": str(output_path), "rows": len(rows), "resumed_rows": len(resumed), "samples": len(out),
                   "finish_reasons": dict(Counter(row["finish_reason"] for row in out)), "generated_tokens": tokens,
                   "seconds": round(seconds, 2), "tokens_per_second": round(new_tokens / seconds, 1) if seconds else None,
                   "metrics": metrics, "reference_field": reference_field, "settings": asdict(options)}
        write_rows(output_path, out)
        write_atomically(summary_path(output_path), json.dumps(summary, indent=2) + "\n")
        journal.remove()
    finally:
        journal.close()  # an interrupted run keeps its journal for the next
    return summary
