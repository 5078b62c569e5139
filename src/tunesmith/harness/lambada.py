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

    task = {**TASK, "task": name, "dataset_kwargs": {"data_files": {"test": str(Path(data).resolve())}}}
    target.write_text(yaml.safe_dump(task, sort_keys=False))
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tunesmith.harness.lambada LAMBADA.jsonl TASK.yaml", file=sys.stderr)
        return 2
    data = Path(argv[0])
    if not data.is_file() or "text" not in json.loads(data.open().readline() or "{}"):
        print(f"error: {data}: not a JSONL file of {{\"text\": passage}} lines", file=sys.stderr)
        return 2
    print(f"wrote {write_lambada_task(data, Path(argv[1]))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
