"""Classification: how a labelled text becomes tokens for each method, prediction, the metrics, and the classify task."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..batch import Batch, pad_rows
from ..config import ClassifyConfig, CleanConfig, DataConfig, RunConfig
from ..data.clean import transforms
from ..data.examples import Examples
from ..data.labelled import label_key, label_set, labelled_units
from ..data.read import lookup
from ..data.report import DataReport
from ..data.units import FIELDS_HINT, Encoded, Unit
from ..errors import UserError
from ..models import first_tokens_text
from ..runtime import autocast
from .base import HEAD_BEFORE_TRAINING, SPEED_REPEATS, Task, TaskKind, check_both_sides, speed_record
from .loss import Validation
from .view import TaskView

IMBALANCE_RATIO = 3.0


SPEED_ROWS = 256  # validation rows `throughput` labels


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

    @property
    def has_head(self) -> bool:
        return self.method == "head"

    def as_dict(self) -> dict:
        return {"labels": self.labels, "method": self.method, "prompt": self.prompt, "verbalizers": self.verbalizers}

    def word_ids(self, tokenizer) -> list[list[int]]:
        """Each label's tokens as the model writes them after the prompt (with the leading space)."""
        return [tokenizer(" " + self.verbalizers[label].strip(), add_special_tokens=False)["input_ids"] for label in self.labels]

    def prompt_ids(self, tokenizer, text: str, room: int) -> list[int]:
        """The prompt's tokens, the text cut so that the whole prompt fits in `room` tokens. A special token's text in
        the text (`<|endoftext|>` in a review) is text, not the control token; the prompt's own are tokens."""
        literal = {"add_special_tokens": False, "split_special_tokens": True}
        text = first_tokens_text(tokenizer, text, room)
        if self.method == "head":
            return tokenizer(text, **literal)["input_ids"][:room]
        head, _, tail = self.prompt.partition("{text}")
        fixed = len(tokenizer(head + tail, add_special_tokens=False)["input_ids"])
        text_ids = tokenizer(text, **literal)["input_ids"][: max(1, room - fixed)]
        if any(special and special in text for special in tokenizer.all_special_tokens):  # kept apart from the prompt's
            pieces = [tokenizer(part, add_special_tokens=False)["input_ids"] for part in (head, tail)]
            return (pieces[0] + text_ids + pieces[1])[:room]
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


class PackedClassifier(torch.nn.Module):
    """A sequence classifier over packed rows: the decoder stack once per row, the head on each example's last token.

    transformers' classifiers read one class per row, at its last non-padding token; packed, a row holds several
    examples, so the head reads the hidden state at each example's end (`Batch.ends`). Wrapping the model (rather
    than reaching into it from the loss) keeps one module for DistributedDataParallel to wrap.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.parts = (getattr(inner, inner.base_model_prefix), inner.score)  # a tuple: registered once, under `model`

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, ends: torch.Tensor, **_):
        from transformers.modeling_outputs import SequenceClassifierOutput

        backbone, head = self.parts
        hidden = backbone(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        return SequenceClassifierOutput(logits=head(hidden.flatten(0, 1)[ends]))


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


class ClassifyUnits:
    """Labelled texts for `prepare`: the label set read first (or a trained classifier's), each row encoded for the method."""

    layout = "examples"
    unit_words = "examples"
    fields_hint = FIELDS_HINT

    def __init__(self, cfg: RunConfig, fixed_labels: list[str] | None = None):
        self.cfg, self.fixed_labels = cfg, fixed_labels
        self.coder: LabelCoder | None = None

    def cache_settings(self) -> dict:
        return {"task": "classify", "classify": self.cfg.classify.model_dump(mode="json", exclude={"metric"}),
                "label_field": self.cfg.data.label_field, "labels": self.fixed_labels}

    def begin(self, reader, files: list[Path]) -> None:
        labels = self.fixed_labels or label_set(reader(DataReport()), files, self.cfg.data)
        if not labels:
            raise UserError(f"no record has a label in the field '{self.cfg.data.label_field}'; "
                            "set data.label_field to the column that holds the labels")
        self.coder = LabelCoder.from_config(labels, self.cfg.classify)

    def units(self, reader, files: list[Path], data: DataConfig, clean: CleanConfig, report: DataReport) -> Iterator[Unit]:
        return labelled_units(reader(report), files, data, clean, report, transforms(clean), set(self.coder.labels))

    def encode(self, units: list[Unit], tokenizer, data: DataConfig, clean: CleanConfig, report: DataReport) -> list[Encoded]:
        encoded = []
        for unit in units:
            ids, mask, index = self.coder.encode(tokenizer, *unit.value, data.block_size)
            encoded.append(Encoded(unit, ids, [(ids, mask, index)], [len(ids)]))
        return encoded

    def finish(self, train, val, data: DataConfig, report: DataReport, eval_only: bool) -> dict:
        check_both_sides(train, val, "examples", eval_only)
        labels = self.coder.labels
        counts = np.bincount(np.asarray(train.classes, dtype=np.int64), minlength=len(labels))
        val_counts = np.bincount(np.asarray(val.classes, dtype=np.int64), minlength=len(labels))
        class_counts = {label: int(n) for label, n in zip(labels, counts)}
        present = [n for n in class_counts.values() if n]
        if present and max(present) > IMBALANCE_RATIO * min(present):
            report.warnings.append(
                f"the classes are imbalanced ({', '.join(f'{k}: {v}' for k, v in class_counts.items())}); "
                "accuracy flatters the majority class: watch macro-F1, or set classify.class_weights=true")
        missing = [label for label, n in class_counts.items() if n == 0]
        if missing and not eval_only:
            report.warnings.append(f"no training example has the label {', '.join(missing)}")
        meta = {"task": "classify", "coder": self.coder.as_dict(), "labels": labels, "class_counts": class_counts,
                "val_class_counts": {label: int(n) for label, n in zip(labels, val_counts)},
                "targets": {"train": train.targets, "val": val.targets}}
        if self.coder.has_head:
            meta["loss_falls_on"] = "one label per example"
        return meta


class ClassifyTask(Task):
    """Labelled texts; a classification head or the label's words (generative) carry the loss, scored by accuracy or macro-F1."""

    def __init__(self, kind: TaskKind, cfg: RunConfig, meta: dict, reference=None):
        super().__init__(kind, cfg, meta)
        self.coder = LabelCoder(**meta["task"]["coder"])
        self.class_counts: dict[str, int] = meta["task"]["class_counts"]
        self.head = self.coder.has_head

    def probe_logits(self, model: torch.nn.Module):
        """With a head, the backbone's last hidden states through the tied embeddings: the language-model head the model was born with."""
        if not self.head:
            return super().probe_logits(model)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        backbone, embeddings = getattr(inner, inner.base_model_prefix), inner.get_input_embeddings()

        def logits(ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
            hidden = backbone(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
            return hidden @ embeddings.weight.T

        return logits

    def dataset(self, prepared, split: str, training: bool = False):
        weights = class_weights(self.class_counts, self.coder.labels) if training and self.cfg.classify.class_weights else None
        return self._packed(prepared.split(split, use_classes=self.head, class_weights=weights), training)

    def training_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return PackedClassifier(model) if self.head and self.packing == "documents" else model

    def _metrics(self, model, dataset, tokenizer, batch_size: int, device: torch.device, precision: str,
                 limit: int | None = None) -> dict:
        predicted, _ = predict_examples(model, dataset, self.coder, tokenizer, batch_size, device, precision, limit)
        return classification_metrics(dataset.classes[: len(predicted)], predicted, self.coder.labels)

    def throughput(self, model, dataset, tokenizer, device: torch.device, precision: str, batch_size: int, generate) -> dict:
        """Rows labelled per second, as `predict` labels them, over up to SPEED_ROWS validation rows."""
        import time

        count = min(len(dataset), SPEED_ROWS)
        predict_examples(model, dataset, self.coder, tokenizer, batch_size, device, precision, min(count, batch_size))  # warm-up

        def timed() -> float:
            started = time.perf_counter()
            predict_examples(model, dataset, self.coder, tokenizer, batch_size, device, precision, count)
            return count / (time.perf_counter() - started)

        return speed_record("predict", [timed() for _ in range(SPEED_REPEATS)], "rows", count, batch_size)

    def score(self, result: Validation) -> float:
        metric = self.cfg.classify.metric
        return result.loss if metric == "val_loss" else -result.metrics[metric]

    def eval_row(self, result: Validation) -> dict:
        return {**super().eval_row(result), "accuracy": result.metrics["accuracy"], "macro_f1": result.metrics["macro_f1"]}

    def progress_text(self, result: Validation) -> str:
        return f"{super().progress_text(result)}  acc {result.metrics['accuracy']:.1%}  F1 {result.metrics['macro_f1']:.3f}"

    def base_lines(self, result: Validation, dataset) -> list[str]:
        scores = result.metrics
        return super().base_lines(result, dataset) + [
            f"base model: accuracy {scores['accuracy']:.1%}, macro-F1 {scores['macro_f1']:.3f}"
            + (f" ({HEAD_BEFORE_TRAINING})" if self.head else " (zero-shot)")]

    def spec(self, tokenizer) -> dict:
        data = self.cfg.data
        return {"task": self.name, **self.coder.as_dict(), "block_size": data.block_size, "text_field": data.text_field,
                "label_field": data.label_field}

    def summary(self, base_metrics: dict, best_metrics: dict, val_dataset) -> dict:
        coder = self.coder
        truth = val_dataset.classes[: len(val_dataset)]
        majority = majority_baseline(self.class_counts, truth, coder.labels)
        baseline = majority if self.head else base_metrics
        best = best_metrics or base_metrics
        return {
            "task": self.name, "classify_method": coder.method, "metric": self.cfg.classify.metric, "labels": coder.labels,
            "accuracy": best["accuracy"], "macro_f1": best["macro_f1"], "per_class": best["per_class"], "confusion": best["confusion"],
            "baseline": "majority class" if self.head else "zero-shot",
            "base_accuracy": baseline["accuracy"], "base_macro_f1": baseline["macro_f1"],
            "majority_accuracy": majority["accuracy"], "majority_macro_f1": majority["macro_f1"],
        }


class ClassifyKind(TaskKind):
    """Classification as the config decides it: labels read from the data, a head or label words."""

    builds = ClassifyTask
    distills = True
    name = "classify"
    learns = "labelled texts (sentiment, topics, ...)"
    section = "classify"
    needs_saved_spec = True

    def for_saved(self, spec: dict, cfg: RunConfig) -> RunConfig:
        """The classifier's own settings, and the fields it read its text and labels from (as `predict` reads them)."""
        saved = {key: spec[key] for key in ("method", "prompt", "verbalizers")}
        fields = {key: spec[key] for key in ("text_field", "label_field") if spec.get(key)}
        return cfg.model_copy(update={"classify": cfg.classify.model_copy(update=saved), "data": cfg.data.model_copy(update=fields)})

    def preparer(self, cfg: RunConfig, saved: dict | None = None) -> ClassifyUnits:
        return ClassifyUnits(cfg, saved["labels"] if saved else None)  # a trained classifier's label set, rather than the data's

    def has_head(self, cfg: RunConfig) -> bool:
        return cfg.classify.method == "head"

    def probe_skip_reason(self, cfg: RunConfig, model_config) -> str | None:
        if self.has_head(cfg) and not getattr(model_config, "tie_word_embeddings", False):
            return "the classifier's model has no language-model head to score text with (its output layer is not its embeddings)"
        return None

    def record_label(self, cfg: RunConfig, record_value) -> str | None:
        label = lookup(record_value, cfg.data.label_field) if isinstance(record_value, dict) else None
        return None if label is None else label_key(label)

    def head_classes(self, cfg: RunConfig, label_count: int) -> int:
        return max(label_count, 2) if self.has_head(cfg) else 0

    def head_labels(self, cfg: RunConfig, meta: dict) -> list[str] | None:
        return meta["task"]["coder"]["labels"] if self.has_head(cfg) else None


class ClassifyView(TaskView):
    """How a classifier run's results read."""

    name = "classify"
    loss_scope = "label-token "
    headline = ("accuracy", "accuracy", True)
    try_it = "classify"
    writes_text = False

    def result_lines(self, summary: dict) -> list[str]:
        return super().result_lines(summary) + [
            f"accuracy {summary['accuracy']:.1%}, macro-F1 {summary['macro_f1']:.3f} "
            f"(baseline, {summary['baseline']}: accuracy {summary['base_accuracy']:.1%}, macro-F1 {summary['base_macro_f1']:.3f})"]

    def eval_lines(self, result) -> list[str]:
        return super().eval_lines(result) + [f"  classification: accuracy {result.metrics['accuracy']:.1%}, "
                                             f"macro-F1 {result.metrics['macro_f1']:.3f}"]

    def comparison_rows(self, summary: dict) -> list[tuple[str, float, float]]:
        return [(f"accuracy (base: {summary['baseline']})", summary["base_accuracy"], summary["accuracy"]),
                (f"macro-F1 (base: {summary['baseline']})", summary["base_macro_f1"], summary["macro_f1"])]

    def saved_with_head(self, spec: dict) -> bool:
        return spec.get("method") == "head"

    def describe(self, spec: dict) -> str:
        return f"A text classifier (labels: {', '.join(spec.get('labels', []))})"
