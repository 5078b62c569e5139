"""Build the model a run trains (weights, dropout override, method) and export the finished one."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig
from ..methods import apply_method, method_of
from ..models import ResolvedModel, fit_embeddings, load_model, load_model_config
from ..models.weights import dropout_overrides, export_model, load_trainable_state, store_weights, trainable_state
from ..tasks import read_task
from .checkpoint import load_trainable, save_hf_model


def base_model(resolved: ResolvedModel, cfg: ModelConfig, tokenizer=None, labels: list[str] | None = None,
               quantize_4bit: bool = False) -> torch.nn.Module:
    """The pre-trained model with the run's dropout, a new classification head for `labels`, and room for added tokens."""
    overrides = dropout_overrides(load_model_config(resolved), cfg.dropout)
    if labels:
        overrides.update(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
                         pad_token_id=tokenizer.pad_token_id)
    model = load_model(resolved, quantize_4bit=quantize_4bit, classifier=bool(labels), new_head=bool(labels), **overrides)
    if labels and _head_of_other_labels(resolved, labels):
        _fresh_head(model)
    if tokenizer is not None:
        fit_embeddings(model, tokenizer)
    return model


def _head_of_other_labels(resolved: ResolvedModel, labels: list[str]) -> bool:
    """Whether the model is a trained classifier whose head scores other labels, as many as these: kept, its rows would
    start as the old labels' by position (a head for another number of labels is never loaded)."""
    saved = read_task(Path(resolved.path)).get("labels")
    return isinstance(saved, list) and len(saved) == len(labels) and list(saved) != list(labels)


def _fresh_head(model: torch.nn.Module) -> None:
    """The classification head started anew, as transformers starts one: normal weights, zero biases."""
    std = getattr(model.config, "initializer_range", 0.02)
    for name, module in model.named_children():
        if name == model.base_model_prefix:
            continue
        for part in module.modules():
            if isinstance(part, torch.nn.Linear):
                torch.nn.init.normal_(part.weight, std=std)
                if part.bias is not None:
                    torch.nn.init.zeros_(part.bias)


def build_model(resolved: ResolvedModel, cfg: ModelConfig, device: torch.device, tokenizer=None,
                labels: list[str] | None = None, storage: tuple[torch.dtype | None, torch.dtype | None] = (None, None)) -> torch.nn.Module:
    """The model to train, its (frozen, trainable) parameters stored in `storage`'s dtypes (see `methods.storage_dtypes`)."""
    method = method_of(cfg.method)
    method.check_device(device)
    model = apply_method(base_model(resolved, cfg, tokenizer, labels, quantize_4bit=method.quantized_base), cfg)
    store_weights(model, *storage)
    return method.place(model, device)


def export_final(model: torch.nn.Module, tokenizer, run_dir: Path, resolved: ResolvedModel, cfg: ModelConfig,
                 labels: list[str] | None = None) -> None:
    """final/: the best weights as a plain transformers model (adapters merged); final-adapter/ for LoRA runs.

    A model trained over a 4-bit or a bf16 base is exported from a fresh fp32 copy of the base with the trained
    weights put in: adapters merge into full-precision weights, and frozen weights keep every bit they had.
    """
    method = method_of(cfg.method)
    load_trainable(model, run_dir / "best" / "trainable.safetensors")
    if method.adapters:
        save_hf_model(model, tokenizer, run_dir / "final-adapter")
    if method.quantized_base or any(p.dtype != torch.float32 for p in model.parameters() if not p.requires_grad):
        trained = {name: t.float() for name, t in trainable_state(model).items()}
        rebuilt = cfg.model_copy(update={"method": method.unquantized, "gradient_checkpointing": False})
        model = apply_method(base_model(resolved, cfg, tokenizer, labels), rebuilt)
        load_trainable_state(model, trained)
    save_hf_model(export_model(model), tokenizer, run_dir / "final")
