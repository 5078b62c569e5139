"""A task file for LAMBADA read from a local copy: lm-eval's own `lambada_openai`, with its data set pointed at a JSONL file
of {"text": passage} lines, for machines that cannot reach the Hugging Face hub.

    python -m tunesmith.harness.lambada lambada_test.jsonl lambada_openai.yaml
    tunesmith eval MODEL --benchmarks lambada_openai.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# lm-eval 0.4's lambada/lambada_openai.yaml, with only the data set's location changed
TASK = {
    "task": "lambada_openai",
    "dataset_path": "json",
    "output_type": "loglikelihood",
    "test_split": "test",
    "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
    "doc_to_target": "{{' '+text.split(' ')[-1]}}",
    "should_decontaminate": True,
    "doc_to_decontamination_query": "{{text}}",
    "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                    {"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    "metadata": {"version": 1.0},
}


def write_lambada_task(data: Path, target: Path, name: str = "lambada_openai") -> Path:
    """The task YAML at `target`, reading `data` (an absolute path is written, so the file works from any folder)."""
    import yaml

    from ..rundir.durable import write_atomically

    task = {**TASK, "task": name, "dataset_kwargs": {"data_files": {"test": str(Path(data).resolve())}}}
    write_atomically(target, yaml.safe_dump(task, sort_keys=False))
    return target


def _problem(data: Path, target: Path) -> str | None:
    """What stops writing the task: data that is not {"text": passage} lines, or a target that is taken (never
    overwritten: it may be the data itself, or a link to a file of the user's) or has no folder."""
    try:
        with data.open(encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "")
        record = json.loads(first)
    except (OSError, ValueError):  # missing, a folder, not UTF-8, not JSON
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        return f"{data}: not a JSONL file of {{\"text\": passage}} lines; give the LAMBADA passages in that form"
    if target.exists() or target.is_symlink():
        return f"{target} already exists; name a new file for the task"
    if not target.parent.is_dir():
        return f"{target.parent} is not a folder; make it first, or name a task file in an existing folder"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tunesmith.harness.lambada LAMBADA.jsonl TASK.yaml", file=sys.stderr)
        return 2
    data, target = Path(argv[0]), Path(argv[1])
    problem = _problem(data, target)
    if problem is None:
        try:
            print(f"wrote {write_lambada_task(data, target)}")
            return 0
        except OSError as exc:
            problem = f"cannot write {target} ({exc.strerror}); name a file in a folder you can write to"
    print(f"error: {problem}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
