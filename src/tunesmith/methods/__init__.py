"""Training methods: which weights train, and everything that follows from it.

One object per method (`full`, `freeze`, `lora`, `qlora`), registered here once. Code elsewhere asks the method
(`method_of(cfg.model.method)`) what it needs to know, and never compares the method's name.
"""

from __future__ import annotations

from .base import Method
from .freeze import Freeze
from .full import Full
from .lora import LoRA, QLoRA

METHODS: dict[str, Method] = {method.name: method for method in (Full(), LoRA(), Freeze(), QLoRA())}  # recommend's order


def method_of(name: str) -> Method:
    """The method of that name (the config has validated it)."""
    return METHODS[name]


def apply_method(model, cfg):
    """Return the model to train (wrapped in a PEFT model for LoRA) with requires_grad set per the method."""
    method = method_of(cfg.method)
    model = method.prepare(model, cfg)
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not method.trains_all:
            model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return model


def storage_dtypes(method: str, weights: str, precision: str):
    """The dtypes to store a run's (frozen, trainable) parameters in (see `Method.storage_dtypes`)."""
    return method_of(method).storage_dtypes(weights, precision)


def fixed_settings(name: str | None) -> tuple[str, ...]:
    """The method's settings a resume must keep; every method's when the run's method is unknown."""
    method = METHODS.get(name or "")
    return method.settings if method else tuple(key for m in METHODS.values() for key in m.settings)


def read_by_another(key: str, method: str) -> bool:
    """Whether `key` is a setting some other method reads and `method` ignores (LoRA's rank under full fine-tuning)."""
    return key not in METHODS[method].reads and any(key in m.reads for m in METHODS.values())


__all__ = ["METHODS", "Method", "apply_method", "fixed_settings", "method_of", "read_by_another", "storage_dtypes"]
