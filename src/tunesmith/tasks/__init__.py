"""The tasks beyond plain text: chat (assistant turns) and classification (labels), and the spec saved with a model."""

from __future__ import annotations

import json
from pathlib import Path

TASK_FILE = "tunesmith_task.json"


def write_task(directory: Path, spec: dict) -> None:
    """What a later `chat`, `predict` or `serve` needs to use the model the way it was trained."""
    (directory / TASK_FILE).write_text(json.dumps(spec, indent=2))


def read_task(directory: Path) -> dict:
    path = Path(directory) / TASK_FILE
    return json.loads(path.read_text()) if path.is_file() else {"task": "lm"}
