"""Training tokens per second of a model shape on this device: its FLOPs per token against what the device sustains."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

# the share of the device's matmul rate that a training step sustains. CPU, measured: gpt2-small and SmolLM2-135M
# train at 239 and 225 GFLOP/s (benchmarks/RESULTS.md) where the 2048x2048 bf16 matmul below runs at about 700
# GFLOP/s on the same 2 cores. CUDA: 0.40 of the table's peak, the usual MFU of a bf16 training loop.
EFFICIENCY = {"cpu": 0.33, "cuda": 0.40, "mps": 0.30}
# FLOPs per parameter per token, by method: forward 2, backward 4 (full). LoRA's backward skips the base weights'
# gradients (2 of the 4), its base is stored in bf16 (no casts) and its small adapter matmuls cost little: on
# SmolLM2-135M on 2 CPU cores it trains at 1.30-1.51x full fine-tuning's tokens/s, 1.44x on average over five
# alternating runs (benchmarks/RESULTS.md), 4.2 in these units; QLoRA adds the dequantization of each weight
LORA_COST = {"cpu": 4.2, "cuda": 5.0, "mps": 5.0}
QLORA_COST = 6.5


@dataclass(frozen=True)
class DeviceRate:
    device: str  # cpu, cuda, mps
    name: str
    matmul_flops: float  # FLOP/s of a large matmul in the training precision
    measured: bool  # timed here, rather than taken from the table of GPU peaks

    @property
    def sustained(self) -> float:
        return self.matmul_flops * EFFICIENCY.get(self.device, 0.3)


def _timed_matmul(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        (a @ b).sum().item()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times[3:])  # the first ones warm up (kernel selection, JIT)


def device_rate(device: torch.device, precision: str, peak_tflops: float | None = None) -> DeviceRate:
    """The table's bf16 peak for a known GPU; otherwise a matmul timed here (a quarter of a second)."""
    from ..runtime import peak_flops

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
    peak = peak_flops(device, peak_tflops)
    if peak:
        return DeviceRate(device.type, name, peak, measured=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return DeviceRate(device.type, name, _timed_matmul(device, dtype), measured=True)


def cost_per_parameter(method: str, device: str, trainable_share: float) -> float:
    """FLOPs per parameter per token of a training step."""
    if method == "full":
        return 6.0
    if method == "freeze":
        return 2.0 + 4.0 * trainable_share  # backward runs through the trained top only
    if method == "qlora":
        return QLORA_COST
    return LORA_COST.get(device, 5.0)


def tokens_per_second(config, params: int, trainable: int, method: str, block_size: int, rate: DeviceRate) -> float:
    from ..runtime import flops_per_token

    per_parameter = cost_per_parameter(method, rate.device, trainable / max(params, 1))
    attention = flops_per_token(config, 0, block_size) * per_parameter / 6  # 12·L·H·Q·T scales with the same passes
    return rate.sustained / (per_parameter * params + attention)
