"""Training tokens per second of a model shape on this device: its FLOPs per token against what the device sustains."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

# the share of the device's rate that a whole model's training step sustains. For a GPU in the table: 0.40 of its
# bf16 peak, the usual MFU of a bf16 training loop. Elsewhere the rate is timed here on one transformer block's
# training step (`_timed_block`), which already pays for autocast's casts, attention and the elementwise work; a
# whole model adds its embeddings, the loss and the optimizer: SmolLM2-135M's full fine-tuning sustained 0.67 of
# the block's rate on 2 cores of an AMD EPYC (benchmarks/bench_memory.py, benchmarks/RESULTS.md).
PEAK_SHARE = 0.40
TIMED_SHARE = 0.67


@dataclass(frozen=True)
class DeviceRate:
    device: str  # cpu, cuda, mps
    name: str
    matmul_flops: float  # FLOP/s: the table's bf16 peak, or a block's training step timed here
    measured: bool  # timed here, rather than taken from the table of GPU peaks

    @property
    def sustained(self) -> float:
        return self.matmul_flops * (TIMED_SHARE if self.measured else PEAK_SHARE)


def _timed_block(device: torch.device, precision: str, hidden: int = 768, heads: int = 12, batch: int = 4, length: int = 256,
                 repeats: int = 5) -> float:
    """FLOP/s of a GPT-2-small-sized block's training step (forward and backward under the run's autocast).

    A plain matmul's rate says little about a step's: how much of it a step sustains differs between CPUs
    (an AMX core runs large bf16 matmuls far faster than it runs the rest), so the step is timed instead.
    """
    import torch.nn.functional as F

    from ..runtime import autocast

    torch.manual_seed(0)
    layers = torch.nn.ModuleDict({"norm1": torch.nn.LayerNorm(hidden), "qkv": torch.nn.Linear(hidden, 3 * hidden),
                                  "out": torch.nn.Linear(hidden, hidden), "norm2": torch.nn.LayerNorm(hidden),
                                  "up": torch.nn.Linear(hidden, 4 * hidden), "down": torch.nn.Linear(4 * hidden, hidden)}).to(device)
    x = torch.randn(batch, length, hidden, device=device, requires_grad=True)

    def step() -> None:
        with autocast(device, precision):
            q, k, v = layers["qkv"](layers["norm1"](x)).view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, length, hidden)
            h = x + layers["out"](attended)
            h = h + layers["down"](F.gelu(layers["up"](layers["norm2"](h))))
        h.float().sum().backward()
        x.grad = None
        layers.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in layers.parameters())
    flops = batch * length * (6 * params + 12 * hidden * length)  # the weights' passes and the attention scores
    return flops / statistics.median(times[2:])  # the first ones warm up (kernel selection, allocation)


def device_rate(device: torch.device, precision: str, peak_tflops: float | None = None) -> DeviceRate:
    """The table's bf16 peak for a known GPU; otherwise a block's training step timed here (a second or two on a CPU)."""
    from ..runtime import peak_flops

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
    peak = peak_flops(device, peak_tflops)
    if peak:
        return DeviceRate(device.type, name, peak, measured=False)
    return DeviceRate(device.type, name, _timed_block(device, precision), measured=True)


def tokens_per_second(config, params: int, trainable: int, method: str, block_size: int, rate: DeviceRate) -> float:
    from ..methods import method_of
    from ..runtime import flops_per_token

    per_parameter = method_of(method).cost_per_parameter(rate.device, trainable / max(params, 1))
    attention = flops_per_token(config, 0, block_size) * per_parameter / 6  # 12·L·H·Q·T scales with the same passes
    return rate.sustained / (per_parameter * params + attention)
