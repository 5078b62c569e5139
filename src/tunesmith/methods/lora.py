"""Low-rank adapters (peft's LoRA) on the attention and MLP projections, over a frozen base held in 16/32 bits
(`lora`) or in 4 bits (`qlora`, bitsandbytes on CUDA)."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method

# FLOPs per parameter per token. LoRA's backward skips the base weights' gradients (2 of full's 4), its base is
# stored in bf16 (no casts) and its small adapter matmuls cost little: on SmolLM2-135M on 2 CPU cores it trains at
# 1.30-1.51x full fine-tuning's tokens/s, 1.44x on average over five alternating runs (benchmarks/RESULTS.md), 4.2
# in these units; QLoRA adds the dequantization of each weight
LORA_COST = {"cpu": 4.2, "cuda": 5.0, "mps": 5.0}
QLORA_COST = 6.5


class LoRA(Method):
    name = "lora"
    learning_rate = 2e-4
    trains_all = False
    adapters = True
    fallback = True
    settings = ("model.lora_rank", "model.lora_alpha", "model.lora_targets")
    reads = (*settings, "model.lora_dropout")
    cpu_compile = (117.0, 1.14)

    def prepare(self, model, cfg):
        from .adapters import add_adapters

        return add_adapters(model, cfg)

    def cost_per_parameter(self, device: str, trainable_share: float) -> float:
        return LORA_COST.get(device, 5.0)


class QLoRA(LoRA):
    name = "qlora"
    quantized_base = True
    fallback = False
    cpu_compile = Method.cpu_compile

    @property
    def unquantized(self) -> str:
        return LoRA.name

    def runs_on(self, device_type: str) -> bool:
        return device_type == "cuda"

    def check_device(self, device) -> None:
        if device.type != "cuda":
            raise ConfigError([f"model.method: qlora needs a CUDA GPU with bitsandbytes (device is {device.type}); "
                               "use lora (the same adapters on a 16/32-bit base) or freeze"])
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(["model.method: qlora needs the bitsandbytes package: pip install bitsandbytes"]) from None

    def prepare(self, model, cfg):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        return super().prepare(model, cfg)

    def place(self, model, device):
        return model  # bitsandbytes placed the 4-bit weights as it loaded them

    def cost_per_parameter(self, device: str, trainable_share: float) -> float:
        return QLORA_COST
