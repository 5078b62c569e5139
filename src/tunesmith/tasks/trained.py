"""A trained classifier as later commands use it: its label probabilities of texts (`predict`, the page's try-it, GRPO's
rewards). It lives in `tasks`, beside the reward model (`reward.RewardModel`), so that a task's rewards can use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..batch import Batch, pad_rows
from ..errors import UserError
from ..models import beyond_embeddings, load_model, load_tokenizer, resolve_model
from ..runtime import pick_device, pick_precision
from . import TASK_FILE, read_task
from .classify import LabelCoder, label_probabilities


def load_classifier(spec: str, device: torch.device, log=print):
    resolved = resolve_model(spec, log=log)
    task = read_task(Path(resolved.path))
    if "verbalizers" not in task:
        raise UserError(f"{spec} is not a classifier (trained with task {task.get('task', 'lm')}); train one with --task classify")
    coder = LabelCoder(task["labels"], task["method"], task["prompt"], task["verbalizers"])
    model = load_model(resolved, classifier=coder.has_head).to(device).eval()
    if coder.has_head and getattr(model.config, "num_labels", len(coder.labels)) != len(coder.labels):
        raise UserError(f"{Path(resolved.path) / TASK_FILE}: damaged (it names {len(coder.labels)} labels for a head of "
                        f"{model.config.num_labels}); restore it from the run, or train the run again")
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
        if self.room < 1:
            raise UserError(f"{spec}: its block size ({self.task.get('block_size', 256)}) leaves no room for a text before "
                            "its longest label word; restore its task file from the run, or train the run again")
        self.text_field = self.task.get("text_field", "text")

    def encode(self, text: str) -> list[int]:
        """The text's prompt tokens, as training encoded it; one line where it holds a token the model cannot read."""
        ids = self.coder.prompt_ids(self.tokenizer, str(text), self.room)
        unknown = beyond_embeddings(self.model, ids, "the text")
        if unknown:
            raise UserError(unknown)
        return ids

    def probabilities(self, texts: list[str | None], batch_size: int = 16) -> list[np.ndarray | None]:
        """Each text's label probabilities (in `labels` order); None for a missing text."""
        return self.probabilities_of([None if text is None else self.encode(text) for text in texts], batch_size)

    @torch.no_grad()
    def probabilities_of(self, encoded: list[list[int] | None], batch_size: int = 16) -> list[np.ndarray | None]:
        """The label probabilities of texts already encoded (`encode`), shortest batched together; None for None."""
        order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
        probabilities: list[np.ndarray | None] = [None] * len(encoded)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, attention = pad_rows([encoded[i] for i in chunk], self.tokenizer.pad_token_id)
            batch = Batch(ids.to(self.device), attention_mask=attention.to(self.device))
            probs = label_probabilities(self.model, batch, self.coder, self.words, [len(encoded[i]) for i in chunk], self.device,
                                        self.precision)
            for r, i in enumerate(chunk):
                probabilities[i] = probs[r].float().cpu().numpy()
        return probabilities
