"""Loss and perplexity of any model on any data, prepared the way training prepares it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .config import RunConfig
from .data import prepare_eval_data
from .errors import UserError
from .models import context_length, load_model, resolve_model, tunesmith_home
from .tasks import read_task, task_tokenizer
from .tasks.classify import LabelCoder, classification_metrics, predict_examples
from .runtime import pick_device, pick_precision
from .loss import validation_loss


@dataclass(frozen=True)
class EvalResult:
    model: str
    loss: float
    perplexity: float
    tokens: int
    block_size: int
    accuracy: float
    task: str = "lm"
    classification: dict | None = None  # classify: accuracy, macro-F1, per class, confusion

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_model(spec: str, data: list[str], cfg: RunConfig, log=print) -> EvalResult:
    """Evaluate `spec` (model, .gguf, or run directory) on every document of `data`.

    A chat model (or `--task chat`) is measured on the assistant turns of conversations; a classifier
    on labelled rows, with its label set.
    """
    resolved = resolve_model(spec, cfg.model.trust_remote_code, log=log)
    saved = read_task(Path(resolved.path)) if Path(resolved.path).is_dir() else {"task": "lm"}
    task = saved["task"] if saved["task"] != "lm" else cfg.task
    tokenizer = task_tokenizer(resolved, task, log=log)
    settings = cfg.task_settings
    labels = None
    if task == "classify":
        if saved["task"] != "classify":
            raise UserError(f"{spec} is not a trained classifier; evaluate a run trained with --task classify")
        labels = saved["labels"]
        settings = replace(settings, name="classify", classify=cfg.classify.model_copy(
            update={"method": saved["method"], "prompt": saved["prompt"], "verbalizers": saved["verbalizers"]}))
    elif task == "chat":
        settings = replace(settings, name="chat")
    model = load_model(resolved, classifier=task == "classify" and saved.get("method") == "head")
    block_size = min(cfg.data.block_size, context_length(model.config) or cfg.data.block_size)
    data_cfg = cfg.data.model_copy(update={"block_size": block_size})
    prepared = prepare_eval_data(data, data_cfg, cfg.clean, tokenizer, tunesmith_home(), task=settings, labels=labels)
    device = pick_device(cfg.train.device)
    precision = pick_precision(cfg.train.precision, device)
    model.to(device)
    examples = prepared.blocks("val")
    batch_size = cfg.train.eval_batch_size or (cfg.train.micro_batch_size if isinstance(cfg.train.micro_batch_size, int) else 4)
    result = validation_loss(model, examples, batch_size, device, precision)
    scores = None
    if task == "classify":
        coder = LabelCoder(**prepared.meta["task"]["coder"])
        predicted, _ = predict_examples(model, examples, coder, tokenizer, batch_size, device, precision)
        scores = classification_metrics(examples.classes[: len(predicted)], predicted, coder.labels)
    return EvalResult(spec, result.loss, result.perplexity, result.tokens, block_size, result.accuracy, task, scores)
