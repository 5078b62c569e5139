"""peft's LoRA adapters put on a model, made lean for training (shared dropout masks, no fp32 copies of inputs) and
for decoding on a CPU (`adapters_for_decoding`)."""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Iterator

import torch

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


def lora_targets(model: torch.nn.Module, cfg) -> list[str] | str:
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


def add_adapters(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """Adapters on the projections; a classification head (`score`) trains whole beside them."""
    from peft import LoraConfig, get_peft_model

    from ..models.weights import is_classifier

    task_type = "SEQ_CLS" if is_classifier(model) else "CAUSAL_LM"
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=lora_targets(model, cfg), bias="none", task_type=task_type)
    try:
        with warnings.catch_warnings():  # peft reads `is_gradient_checkpointing`, which transformers now calls deprecated
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            model = get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError([f"model.lora_targets: {exc}"]) from None
    _lean_adapters(model, cfg.lora_dropout)
    return model


class _OutsideAutocast(torch.nn.Module):
    """An adapter matrix applied in fp32 with autocast off (see `adapters_for_decoding`)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear

    @property
    def weight(self) -> torch.nn.Parameter:  # peft reads the adapter's dtype from it
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return torch.nn.functional.linear(x.float(), self.linear.weight)


@contextlib.contextmanager
def adapters_for_decoding(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """On a CPU, while the model decodes under autocast to `dtype` (None: no autocast), its fp32 LoRA matrices apply in
    fp32 with autocast off.

    A decoding step multiplies a few dozen rows by each rank-r matrix: on a CPU a bf16 product that small costs about
    40 us (oneDNN's fixed cost) where an fp32 one costs 10, and autocast, which keeps no casts under inference_mode,
    casts every fp32 adapter matrix again at every token. For the embedded default that is 420 products and 420 casts a
    token. The adapters' contribution is then computed in fp32 rather than bf16 (the base layers are unchanged), so tokens
    can differ from a decode under autocast throughout by that rounding; the training pass scores them as it always
    does. Hooks on the adapters' own Linear modules do not run meanwhile; adapters stored in bf16, other devices and
    decoding without autocast are left as they are.
    """
    from peft.tuners.lora import LoraLayer

    matrices = [] if device.type != "cpu" or dtype is None else [
        (group, name, linear) for layer in model.modules() if isinstance(layer, LoraLayer)
        for group in (layer.lora_A, layer.lora_B) for name, linear in group.items()
        if type(linear) is torch.nn.Linear and linear.bias is None and linear.weight.dtype == torch.float32]
    swapped = []
    try:
        for group, name, linear in matrices:
            group[name] = _OutsideAutocast(linear)
            swapped.append((group, name, linear))
        yield
    finally:
        for group, name, linear in swapped:
            group[name] = linear
