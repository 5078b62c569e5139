"""Pick the device and the numeric precision, and make the matching autocast context."""

from __future__ import annotations

import contextlib
import warnings

import torch

from ..errors import ConfigError


def pick_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError([f"train.device: unknown device '{spec}'; use auto, cpu, cuda, cuda:N or mps"]) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"train.device: {spec} requested but no CUDA GPU is visible; use auto or cpu"])
    return device


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX) make bf16 the fast path on CPU; without them it is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_precision(setting: str, device: torch.device) -> str:
    if setting == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and cpu_has_bf16():
            return "bf16"
        return "fp32"
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError([f"train.precision: fp16 needs a CUDA GPU (device is {device.type}); use bf16 or fp32"])
    if setting == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn("this CPU has no native bf16; bf16 will be slow, fp32 is faster here", stacklevel=2)
    return setting


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
