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


def task_tokenizer(resolved, task: str, log=print):
    """The model's tokenizer, with a ChatML template added for a chat run on a model that has none."""
    from ..models import load_tokenizer
    from .chat import ensure_chat_template

    tokenizer = load_tokenizer(resolved)
    if task == "chat" and ensure_chat_template(tokenizer):
        log("the model has no chat template: using ChatML, with <|im_start|> and <|im_end|> added as special tokens")
    return tokenizer
