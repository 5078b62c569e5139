"""Which weights train: all (`full`), the top of the network (`freeze`), or low-rank adapters (`lora`, `qlora`)."""

from __future__ import annotations

import weakref

import torch

from ..config import ModelConfig
from ..errors import ConfigError

# attention and MLP projections per architecture, as named in transformers
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
for _llama_like in ("mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "olmo2", "smollm3"):
    LORA_TARGETS[_llama_like] = LORA_TARGETS["llama"]

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


def _freeze(model: torch.nn.Module, cfg: ModelConfig) -> None:
    blocks = transformer_blocks(model)
    frozen = len(blocks) - cfg.train_last_layers if cfg.train_last_layers else cfg.freeze_layers
    if frozen >= len(blocks) or frozen < 0:
        raise ConfigError([f"model.freeze_layers/train_last_layers: the model has {len(blocks)} blocks; "
                           f"freeze at most {len(blocks) - 1} and train at least 1"])
    for module in model.modules():  # the token embeddings, and learned positions where the model has them (GPT-2's wpe)
        if isinstance(module, torch.nn.Embedding):
            module.requires_grad_(False)
    for block in blocks[:frozen]:
        block.requires_grad_(False)
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        output.requires_grad_(True)  # an untied head trains with the top blocks


def lora_targets(model: torch.nn.Module, cfg: ModelConfig) -> list[str] | str:
    if cfg.lora_targets:
        return cfg.lora_targets
    return LORA_TARGETS.get(model.config.model_type, "all-linear")


class SharedInputDropout(torch.nn.Module):
    """Adapter dropout with one mask per input tensor, not one per adapter.

    q, k and v (and gate and up) read the same hidden states; peft draws a mask for each of their adapters,
    which costs three times the small projections it feeds. Here the adapters of a model share one memo: an
    adapter called on the tensor the previous one saw reuses its mask, as one dropout in front of the three would.
    """

    def __init__(self, p: float, memo: dict):
        super().__init__()
        self.p, self.memo = p, memo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        seen = self.memo.get("input")
        if seen is None or seen() is not x:
            keep = torch.empty_like(x).bernoulli_(1 - self.p)
            self.memo["input"], self.memo["scale"] = weakref.ref(x), keep.div_(1 - self.p)
        return x * self.memo["scale"]


def _lean_adapters(model: torch.nn.Module, dropout: float) -> None:
    """Shared dropout masks, and no fp32 copy of each adapter's input: autocast casts for the adapter's matmuls.

    (4-bit layers keep peft's casting: they also run outside autocast, where their input needs it.)
    """
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import Linear

    memo: dict = {}
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.cast_input_dtype_enabled = not isinstance(module, Linear)
            for adapter in list(module.lora_dropout.keys()):
                if dropout > 0:
                    module.lora_dropout[adapter] = SharedInputDropout(dropout, memo)


def _lora(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """Adapters on the projections; a classification head (`score`) trains whole beside them."""
    from peft import LoraConfig, get_peft_model

    task_type = "SEQ_CLS" if is_classifier(model) else "CAUSAL_LM"
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=lora_targets(model, cfg), bias="none", task_type=task_type)
    try:
        model = get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError([f"model.lora_targets: {exc}"]) from None
    _lean_adapters(model, cfg.lora_dropout)
    return model


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


def is_classifier(model: torch.nn.Module) -> bool:
    return any(name.endswith("ForSequenceClassification") for name in (getattr(model.config, "architectures", None) or [])) or \
        type(model).__name__.endswith("ForSequenceClassification")


def apply_method(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """Return the model to train (wrapped in a PEFT model for LoRA) with requires_grad set per the method."""
    if cfg.method == "freeze":
        _freeze(model, cfg)
    elif cfg.method in ("lora", "qlora"):
        model = _lora(model, cfg)
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method in ("lora", "qlora", "freeze"):
            model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return model


def storage_dtypes(method: str, weights: str, precision: str) -> tuple[torch.dtype | None, torch.dtype | None]:
    """The dtypes to store (frozen, trainable) parameters in; None keeps fp32.

    Under bf16 or fp16 autocast a frozen weight is only ever read in that dtype, so it is stored in it: autocast
    then neither casts it at each forward nor holds the cast copy until backward. `weights: bf16` stores the
    trained weights in bf16 too (the optimizer then rounds its fp32 updates stochastically; see `training/optim.py`).
    """
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    frozen = low if method in ("lora", "freeze") or weights == "bf16" else None
    return frozen, torch.bfloat16 if weights == "bf16" else None


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
