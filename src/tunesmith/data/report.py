"""The data report: what each preparation step did, with counts, examples and warnings; JSON plus a histogram PNG."""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..rundir.folder import DATA_REPORT

EXAMPLES = 3
STEP_ORDER = ["malformed_row", "missing_field", "not_a_conversation", "not_a_preference_record", "not_a_prompt_record", "no_final_answer",
              "prompts_differ", "empty", "no_assistant_turn", "no_prompt", "empty_prompt", "empty_answer", "identical_answers",
              "unpaired_for_dpo", "unpaired_for_orpo", "too_short_chars", "too_long_chars", "unknown_label", "only_boilerplate",
              "exact_duplicate", "too_short_tokens", "too_long_tokens", "answer_beyond_block_size", "prompt_beyond_block_size",
              "identical_after_truncation", "control_token_text", "near_duplicate"]
EXAMPLE_CHARS = 160


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXAMPLE_CHARS else flat[: EXAMPLE_CHARS - 1] + "…"


@dataclass
class DataReport:
    """Filled in while documents stream through prepare; `removed` and `changed` are per step name."""

    read: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    files: int = 0
    empty_files: list[str] = field(default_factory=list)
    lines_with_bad_bytes: int = 0
    boilerplate_lines: list[dict] = field(default_factory=list)
    leakage: dict = field(default_factory=dict)
    splits: dict = field(default_factory=dict)
    token_lengths: array = field(default_factory=lambda: array("q"), repr=False)  # one entry per kept document
    mix: list[dict] = field(default_factory=list)  # weighted sources and replay: each source's target and actual share
    task: dict = field(default_factory=dict)  # chat and classify: what the task's preparation found (classes, truncations)
    warnings: list[str] = field(default_factory=list)

    def remove(self, step: str, text: str) -> None:
        self.removed[step] = self.removed.get(step, 0) + 1
        shown = self.examples.setdefault(step, [])
        if len(shown) < EXAMPLES:
            shown.append(_excerpt(text))

    def change(self, step: str) -> None:
        self.changed[step] = self.changed.get(step, 0) + 1

    @property
    def kept(self) -> int:
        return self.splits.get("train", {}).get("documents", 0) + self.splits.get("val", {}).get("documents", 0)

    def steps(self) -> list[dict]:
        """Documents in and out at each step that removed any, in pipeline order."""
        rows, remaining = [], self.read
        for step, count in sorted(self.removed.items(), key=lambda item: STEP_ORDER.index(item[0]) if item[0] in STEP_ORDER else len(STEP_ORDER)):
            rows.append({"step": step, "in": remaining, "removed": count, "out": remaining - count, "examples": self.examples.get(step, [])})
            remaining -= count
        return rows

    def length_histogram(self) -> tuple[list[int], list[float]]:
        lengths = np.frombuffer(self.token_lengths, dtype=np.int64) if self.token_lengths else np.zeros(0)
        if not len(lengths):
            return [], []
        edges = np.unique(np.geomspace(max(1, lengths.min()), max(2, lengths.max() + 1), num=21).round())
        counts, edges = np.histogram(lengths, bins=edges)
        return counts.tolist(), edges.tolist()

    def to_dict(self) -> dict:
        lengths = np.frombuffer(self.token_lengths, dtype=np.int64) if self.token_lengths else np.zeros(0, dtype=np.int64)
        counts, edges = self.length_histogram()
        return {
            "files": self.files,
            "empty_files": self.empty_files,
            "documents_read": self.read,
            "documents_kept": self.kept,
            "steps": self.steps(),
            "documents_changed": self.changed,
            "lines_with_invalid_utf8": self.lines_with_bad_bytes,
            "boilerplate_lines": self.boilerplate_lines,
            "splits": self.splits,
            "leakage": self.leakage,
            "mix": self.mix,
            "task": self.task,
            "document_tokens": {
                "mean": float(lengths.mean()) if len(lengths) else 0.0,
                "median": float(np.median(lengths)) if len(lengths) else 0.0,
                "p95": float(np.percentile(lengths, 95)) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
                "histogram": {"counts": counts, "edges": edges},
            },
            "warnings": self.warnings,
        }

    def write(self, directory: Path) -> None:
        (directory / DATA_REPORT).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False))
        write_length_plot(self, directory / "doc_lengths.png")


def write_length_plot(report: DataReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts, edges = report.length_histogram()
    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=100)
    if counts:
        axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0", edgecolor="white")
        axis.set_xscale("log")
    axis.set_xlabel("tokens per document")
    axis.set_ylabel("documents")
    axis.set_title(f"Document lengths ({report.kept:,} documents)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def source_line(source: dict, units: str) -> str:
    """One source of a weighted mix (data_report.json's `mix`): its share of the training tokens against its target."""
    name = "rehearsal (data.replay)" if source["rehearsal"] else source["source"]
    return (f"source {name}: {source['actual_share']:.1%} of the training tokens (target {source['target_share']:.1%}), "
            f"{source['units_used']:,} drawn from its {source['units']:,} {units} (repeats count)")


def summary_lines(report: dict, meta: dict) -> list[str]:
    """The printed summary of prepare, from data_report.json and meta.json."""
    lines = [f"documents: {report['documents_read']:,} read, {report['documents_kept']:,} kept, "
             f"{report['documents_read'] - report['documents_kept']:,} dropped"]
    for row in report["steps"]:
        example = f'  e.g. "{row["examples"][0]}"' if row["examples"] else ""
        lines.append(f"  - {row['removed']:,} {row['step'].replace('_', ' ')}{example}")
    if report["documents_changed"]:
        changed = ", ".join(f"{name.replace('_', ' ')} {n:,}" for name, n in report["documents_changed"].items())
        lines.append(f"  documents changed by: {changed}")
    if report["boilerplate_lines"]:
        top = report["boilerplate_lines"][0]
        lines.append(f"  boilerplate: {len(report['boilerplate_lines'])} repeated lines removed, most often \"{top['line'][:80]}\" ({top['documents']} documents)")
    train, val = meta["train"], meta["val"]
    task = meta.get("task", {})
    unit, key = ("documents", "documents") if meta["layout"] == "packed" else (f"examples{task.get('examples_are', '')}", "examples")
    if key not in train:  # a run prepared before format 4 kept the example counts under "documents"
        key = "documents"
    lines.append(f"split: {train[key]:,} train / {val[key]:,} validation {unit}")
    if task.get("loss_falls_on"):
        lines.append(f"tokens: {train['tokens']:,} train / {val['tokens']:,} validation (the loss falls on {task['loss_falls_on']})")
    elif task.get("targets"):
        lines.append(f"tokens: {train['tokens']:,} train / {val['tokens']:,} validation, of which "
                     f"{task['targets']['train']:,} / {task['targets']['val']:,} carry the loss")
    else:
        lines.append(f"tokens: {train['tokens']:,} train / {val['tokens']:,} validation "
                     f"({val.get('rows', val.get('blocks'))} validation blocks of up to {meta['settings']['block_size']})")
    lines += [f"  {source_line(source, meta.get('units', 'documents'))}" for source in report.get("mix", [])]
    if task.get("class_counts"):
        counts = ", ".join(f"{label}: {n:,}" for label, n in task["class_counts"].items())
        lines.append(f"classes (train): {counts}")
    if task.get("truncated"):
        lines.append(f"  {task['truncated']:,} examples longer than a block were truncated")
    if report["leakage"]:
        lines.append(f"leakage check: {report['leakage']['summary']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return lines
