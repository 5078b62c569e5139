"""`tunesmith predict`: label every row of a CSV, TSV or JSONL file with a trained classifier, keeping all its columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..batch import Batch, pad_rows
from ..data.read import lookup
from ..errors import UserError
from ..models import load_model, load_tokenizer, resolve_model
from ..runtime import pick_device, pick_precision
from ..tasks import read_task
from ..tasks.classify import LabelCoder, label_probabilities
from .row_files import TABLE_FORMATS, check_output, read_rows, write_rows


def load_classifier(spec: str, device: torch.device, log=print):
    resolved = resolve_model(spec, log=log)
    task = read_task(Path(resolved.path))
    if "verbalizers" not in task:
        raise UserError(f"{spec} is not a classifier (trained with task {task.get('task', 'lm')}); train one with --task classify")
    coder = LabelCoder(task["labels"], task["method"], task["prompt"], task["verbalizers"])
    model = load_model(resolved, classifier=coder.has_head).to(device).eval()
    return model, load_tokenizer(resolved), coder, task


class Classifier:
    """A trained classifier ready to label texts: the model, its label coder and the room its prompt leaves."""

    def __init__(self, spec: str, device_name: str = "auto", log=print):
        self.device = pick_device(device_name)
        self.precision = pick_precision("auto", self.device)
        self.model, self.tokenizer, self.coder, self.task = load_classifier(spec, self.device, log)
        self.labels = self.coder.labels
        self.words = self.coder.word_ids(self.tokenizer)
        self.room = self.task.get("block_size", 256) - max(map(len, self.words)) - 1
        self.text_field = self.task.get("text_field", "text")

    @torch.no_grad()
    def probabilities(self, texts: list[str | None], batch_size: int = 16) -> list[np.ndarray | None]:
        """Each text's label probabilities (in `labels` order), shortest texts batched together; None for a missing text."""
        encoded = [self.coder.prompt_ids(self.tokenizer, str(text), self.room) if text is not None else None for text in texts]
        order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
        probabilities: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, attention = pad_rows([encoded[i] for i in chunk], self.tokenizer.pad_token_id)
            batch = Batch(ids.to(self.device), attention_mask=attention.to(self.device))
            probs = label_probabilities(self.model, batch, self.coder, self.words, [len(encoded[i]) for i in chunk], self.device,
                                        self.precision)
            for r, i in enumerate(chunk):
                probabilities[i] = probs[r].float().cpu().numpy()
        return probabilities


def predict_file(spec: str, input_path: Path, output_path: Path, text_field: str | None = None, batch_size: int = 16,
                 device_name: str = "auto", log=print) -> int:
    """Write every input row with `prediction` and `p_<label>` added, in the input's order; returns the row count.

    The text is read from `text_field`, by default the field the classifier was trained on.
    """
    classifier = Classifier(spec, device_name, log)
    text_field = text_field or classifier.text_field
    check_output(output_path)
    rows = read_rows(input_path, TABLE_FORMATS)
    texts = [lookup(row, text_field) for row in rows]
    if rows and all(text is None for text in texts):
        raise UserError(f"--input {input_path}: no row has the field '{text_field}' (fields: {', '.join(rows[0])}); pass --text-field")
    labels = classifier.labels
    out = []
    for row, p in zip(rows, classifier.probabilities(texts, batch_size)):
        added = {"prediction": None, **{f"p_{label}": None for label in labels}}
        if p is not None:
            added = {"prediction": labels[int(p.argmax())], **{f"p_{label}": round(float(v), 6) for label, v in zip(labels, p)}}
        out.append({**row, **added})
    write_rows(output_path, out)
    return len(out)
