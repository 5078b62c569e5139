"""Loss and perplexity of any model on any data, prepared the way training prepares it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import RunConfig
from .data import prepare_eval_data
from .models import context_length, load_model, load_tokenizer, resolve_model, tunesmith_home
from .training.hardware import pick_device, pick_precision
from .training.loss import validation_loss


@dataclass(frozen=True)
class EvalResult:
    model: str
    loss: float
    perplexity: float
    tokens: int
    block_size: int
    accuracy: float

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate_model(spec: str, data: list[str], cfg: RunConfig, log=print) -> EvalResult:
    """Evaluate `spec` (model, .gguf, or run directory) on every document of `data`."""
    resolved = resolve_model(spec, cfg.model.trust_remote_code, log=log)
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved)
    block_size = min(cfg.data.block_size, context_length(model.config) or cfg.data.block_size)
    data_cfg = cfg.data.model_copy(update={"block_size": block_size})
    prepared = prepare_eval_data(data, data_cfg, cfg.clean, tokenizer, tunesmith_home())
    device = pick_device(cfg.train.device)
    precision = pick_precision(cfg.train.precision, device)
    model.to(device)
    result = validation_loss(model, prepared.blocks("val"), cfg.train.micro_batch_size, device, precision)
    return EvalResult(spec, result.loss, result.perplexity, result.tokens, block_size, result.accuracy)
