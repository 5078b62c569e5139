"""`tunesmith predict`: label every row of a CSV, TSV or JSONL file with a trained classifier, keeping all its columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .batch import Batch, pad_rows
from .data.read import lookup
from .errors import UserError
from .models import load_model, load_tokenizer, resolve_model
from .row_files import TABLE_FORMATS, check_output, read_rows, write_rows
from .tasks import read_task
from .tasks.classify import LabelCoder, label_probabilities
from .runtime import pick_device, pick_precision


def load_classifier(spec: str, device: torch.device, log=print):
    resolved = resolve_model(spec, log=log)
    task = read_task(Path(resolved.path))
    if "verbalizers" not in task:
        raise UserError(f"{spec} is not a classifier (trained with task {task.get('task', 'lm')}); train one with --task classify")
    coder = LabelCoder(task["labels"], task["method"], task["prompt"], task["verbalizers"])
    model = load_model(resolved, classifier=coder.has_head).to(device).eval()
    return model, load_tokenizer(resolved), coder, task


@torch.no_grad()
def predict_file(spec: str, input_path: Path, output_path: Path, text_field: str | None = None, batch_size: int = 16,
                 device_name: str = "auto", log=print) -> int:
    """Write every input row with `prediction` and `p_<label>` added, in the input's order; returns the row count.

    The text is read from `text_field`, by default the field the classifier was trained on.
    """
    device = pick_device(device_name)
    precision = pick_precision("auto", device)
    model, tokenizer, coder, task = load_classifier(spec, device, log)
    block_size, text_field = task.get("block_size", 256), text_field or task.get("text_field", "text")
    check_output(output_path)
    rows = read_rows(input_path, TABLE_FORMATS)
    texts = [lookup(row, text_field) for row in rows]
    if rows and all(text is None for text in texts):
        raise UserError(f"--input {input_path}: no row has the field '{text_field}' (fields: {', '.join(rows[0])}); pass --text-field")
    words = coder.word_ids(tokenizer)
    room = block_size - max(map(len, words)) - 1
    encoded = [coder.prompt_ids(tokenizer, str(text), room) if text is not None else None for text in texts]
    order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
    probabilities: dict[int, np.ndarray] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, attention = pad_rows([encoded[i] for i in chunk], tokenizer.pad_token_id)
        batch = Batch(ids.to(device), attention_mask=attention.to(device))
        probs = label_probabilities(model, batch, coder, words, [len(encoded[i]) for i in chunk], device, precision)
        for r, i in enumerate(chunk):
            probabilities[i] = probs[r].float().cpu().numpy()
    out = []
    for index, row in enumerate(rows):
        added = {"prediction": None, **{f"p_{label}": None for label in coder.labels}}
        if index in probabilities:
            p = probabilities[index]
            added = {"prediction": coder.labels[int(p.argmax())], **{f"p_{label}": round(float(v), 6) for label, v in zip(coder.labels, p)}}
        out.append({**row, **added})
    write_rows(output_path, out)
    return len(out)
