"""A model's weights as training holds them: dropout settings, the stack of blocks, dtypes, counts, the trainable state.

Which weights train is the training method's (`tunesmith.methods`)."""

from __future__ import annotations

import torch

from ..errors import ConfigError

DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout", "dropout",
                  "hidden_dropout_prob", "attention_probs_dropout_prob", "summary_first_dropout")


def dropout_overrides(config, value: float | None) -> dict:
    """Config fields to set for a dropout override: every dropout the architecture has."""
    if value is None:
        return {}
    found = {name: value for name in DROPOUT_FIELDS if isinstance(getattr(config, name, None), (int, float))}
    if not found:
        raise ConfigError([f"model.dropout: {config.model_type} has no dropout setting; remove model.dropout"])
    return found


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of decoder blocks: the longest ModuleList (GPT-2's `h`, Llama's `layers`, ...)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ConfigError(["model.method: freeze needs a model with a stack of blocks; use method full or lora"])
    return max(lists, key=len)


def keeps_packed_apart(model: torch.nn.Module) -> bool:
    """Whether the model keeps sequences packed in one row apart when their position ids restart.

    transformers' masking utilities (`create_causal_mask`) turn restarting position ids into attention
    confined to each sequence, for SDPA, eager and flex attention (flash attention reads them directly);
    architectures whose decoder stack is built on them and takes position ids can be fed packed rows.
    """
    import inspect
    import sys

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(inner, getattr(inner, "base_model_prefix", ""), None) or inner
    source = sys.modules.get(type(backbone).__module__)
    return hasattr(source, "create_causal_mask") and "position_ids" in inspect.signature(backbone.forward).parameters


def architecture_keeps_packed_apart(model_config, trust_remote_code: bool = False) -> bool:
    """`keeps_packed_apart` for a model not loaded yet: its architecture built on the meta device, without weights."""
    import warnings

    from transformers import AutoModelForCausalLM

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
        except (ValueError, KeyError, ImportError, OSError):  # an architecture with no causal-LM class: nothing to pack for
            return False
    return keeps_packed_apart(model)


def scores_with_head(config) -> bool:
    """Whether a model config is a classifier's or a reward model's (a head over the last hidden state, no token
    distributions): a model to score text with, not to generate it."""
    return any(name.endswith("ForSequenceClassification") for name in (getattr(config, "architectures", None) or []))


def is_classifier(model: torch.nn.Module) -> bool:
    return scores_with_head(model.config) or type(model).__name__.endswith("ForSequenceClassification")


def store_weights(model: torch.nn.Module, frozen: torch.dtype | None, trainable: torch.dtype | None) -> None:
    """Cast the floating-point parameters in place, frozen and trainable ones to their own dtype (buffers stay).

    Frozen norms go too: a norm with an fp32 weight turns its bf16 input into an fp32 output, which q, k and v
    (or gate and up) would then each cast to bf16 again and each keep for backward.
    """
    for parameter in model.parameters():
        dtype = trainable if parameter.requires_grad else frozen
        if dtype is not None and parameter.is_floating_point() and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: the trainable parameters only; the frozen rest is the base model's."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in state]
    unknown = [name for name in state if name not in params]
    if missing or unknown:
        raise ValueError(f"checkpoint does not match the model (missing {missing[:3]}, unknown {unknown[:3]})")
    reshaped = [name for name, tensor in state.items() if tuple(tensor.shape) != tuple(params[name].shape)]
    if reshaped:
        name = reshaped[0]
        raise ValueError(f"{name} has shape {tuple(state[name].shape)} there and {tuple(params[name].shape)} in the model")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def export_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model to save as final/: LoRA adapters merged into the base weights."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def short_count(n: int) -> str:
    """A parameter count as people say it: 134.5M, 1.24B, 39.2k."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"
