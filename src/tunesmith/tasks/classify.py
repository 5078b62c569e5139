"""Classification: labels, how an example becomes tokens for each method, prediction, and the metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ClassifyConfig
from ..data.examples import Batch, Examples, pad_rows
from ..runtime import autocast


def label_key(value) -> str:
    """Labels compare as text: 1, "1" and 1.0 from different files are the same class."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def sorted_labels(labels) -> list[str]:
    """Numeric labels in numeric order, others alphabetically."""
    def order(label: str):
        try:
            return (0, float(label), label)
        except ValueError:
            return (1, 0.0, label)
    return sorted(set(labels), key=order)


@dataclass(frozen=True)
class LabelCoder:
    """How labelled texts become tokens: the label set and, for the generative method, prompt and label words."""

    labels: list[str]
    method: str
    prompt: str
    verbalizers: dict[str, str]

    @classmethod
    def from_config(cls, labels: list[str], cfg: ClassifyConfig) -> "LabelCoder":
        words = {label: cfg.verbalizers.get(label, label) for label in labels}
        return cls(labels, cfg.method, cfg.prompt.replace("\\n", "\n"), words)

    def as_dict(self) -> dict:
        return {"labels": self.labels, "method": self.method, "prompt": self.prompt, "verbalizers": self.verbalizers}

    def word_ids(self, tokenizer) -> list[list[int]]:
        """Each label's tokens as the model writes them after the prompt (with the leading space)."""
        return [tokenizer(" " + self.verbalizers[label].strip(), add_special_tokens=False)["input_ids"] for label in self.labels]

    def prompt_ids(self, tokenizer, text: str, room: int) -> list[int]:
        """The prompt's tokens, the text cut so that the whole prompt fits in `room` tokens."""
        if self.method == "head":
            return tokenizer(text, add_special_tokens=False)["input_ids"][:room]
        head, _, tail = self.prompt.partition("{text}")
        fixed = len(tokenizer(head + tail, add_special_tokens=False)["input_ids"])
        text_ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max(1, room - fixed)]
        return tokenizer(head + tokenizer.decode(text_ids) + tail, add_special_tokens=False)["input_ids"][:room]

    def encode(self, tokenizer, text: str, label: str, block_size: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Ids, loss mask and class index; the generative method's targets are the label word and EOS."""
        index = self.labels.index(label)
        if self.method == "head":
            ids = self.prompt_ids(tokenizer, text, block_size)
            return np.asarray(ids, dtype=np.int64), np.zeros(len(ids), dtype=np.uint8), index
        answer = self.word_ids(tokenizer)[index] + [tokenizer.eos_token_id]
        prompt = self.prompt_ids(tokenizer, text, block_size - len(answer))
        mask = np.r_[np.zeros(len(prompt), dtype=np.uint8), np.ones(len(answer), dtype=np.uint8)]
        return np.asarray(prompt + answer, dtype=np.int64), mask, index


@torch.no_grad()
def label_probabilities(model, batch: Batch, coder: LabelCoder, word_ids: list[list[int]], prompt_lengths: list[int],
                        device: torch.device, precision: str) -> torch.Tensor:
    """(B, labels) probabilities: the head's softmax, or a softmax over each label word's total log-likelihood."""

    if coder.method == "head":
        with autocast(device, precision):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return logits.float().softmax(-1)
    if all(len(word) == 1 for word in word_ids):  # one forward pass: the label words' logits after each prompt
        with autocast(device, precision):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        last = torch.tensor(prompt_lengths, device=device) - 1
        chosen = logits[torch.arange(batch.size, device=device), last].float()
        return chosen[:, [word[0] for word in word_ids]].softmax(-1)
    scores = torch.empty(batch.size, len(word_ids), device=device)
    for column, word in enumerate(word_ids):
        rows = [batch.input_ids[r, : prompt_lengths[r]].tolist() + word for r in range(batch.size)]
        ids, attention = (t.to(device) for t in pad_rows(rows, 0))
        with autocast(device, precision):
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
        logprobs = logits.float().log_softmax(-1)
        for r in range(batch.size):
            start = prompt_lengths[r]
            positions = torch.arange(start - 1, start - 1 + len(word), device=device)
            scores[r, column] = logprobs[r, positions, torch.tensor(word, device=device)].sum()
    return scores.softmax(-1)


@torch.no_grad()
def predict_examples(model, examples: Examples, coder: LabelCoder, tokenizer, batch_size: int, device: torch.device,
                     precision: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class indices and the (N, labels) probabilities, in example order."""
    was_training = model.training
    model.eval()
    words = coder.word_ids(tokenizer)
    count = min(len(examples), limit or len(examples))
    probabilities = np.zeros((count, len(coder.labels)), dtype=np.float64)
    for indices in examples.batches_by_length(batch_size, limit):
        batch = examples.batch(indices)
        lengths = [len(examples.prompt_ids(i)) for i in indices]
        probs = label_probabilities(model, batch.to(device), coder, words, lengths, device, precision)
        probabilities[indices] = probs.cpu().numpy()
    model.train(was_training)
    return probabilities.argmax(-1), probabilities


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows: truth, columns: predicted)."""
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class, f1s = {}, []
    for i, label in enumerate(labels):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i].sum() if confusion[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(confusion[i].sum())}
        if confusion[i].sum():
            f1s.append(f1)
    total = confusion.sum()
    return {
        "accuracy": float(np.trace(confusion) / total) if total else math.nan,
        "macro_f1": float(np.mean(f1s)) if f1s else math.nan,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "labels": labels,
    }


def majority_baseline(train_counts: dict[str, int], truth: np.ndarray, labels: list[str]) -> dict:
    """The score of always answering the most common training label."""
    majority = labels.index(max(train_counts, key=train_counts.get))
    return classification_metrics(truth, np.full_like(truth, majority), labels)


def class_weights(counts: dict[str, int], labels: list[str]) -> np.ndarray:
    """Inverse frequency, scaled so the weights average 1 over the training examples."""
    n = np.asarray([counts.get(label, 0) for label in labels], dtype=np.float64)
    weights = np.where(n > 0, n.sum() / (len(labels) * np.maximum(n, 1)), 0.0)
    return weights.astype(np.float32)
