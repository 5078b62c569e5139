"""The ground floor every side stands on: the device, the numeric precision and its autocast context, the device's
speed, out-of-memory detection, SIGTERM as an interrupt, and the address a server listens on. It imports no other part
of tunesmith but its errors."""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, TypeVar

import torch

from .errors import ConfigError, UserError, is_out_of_memory

T = TypeVar("T")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C's KeyboardInterrupt is (see `term_as_interrupt`)."""


@contextlib.contextmanager
def term_as_interrupt():
    """SIGTERM ends what runs inside as Ctrl-C does (`Terminated`, a KeyboardInterrupt, so `finally` blocks and the CLI's
    one line run), where Python's default would end the process at once, silently; a no-op off the main thread."""
    import signal

    def interrupt(signum, frame):
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def usable_cores() -> int:
    """The cores this process may run on (a container's or `taskset`'s share, not the machine's)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pick_device(spec: str = "auto", setting: str = "train.device") -> torch.device:
    """The device `spec` names; an unknown or missing one is refused naming `setting`, as the user gave it."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError([f"{setting}: unknown device '{spec}'; use auto, cpu, cuda, cuda:N or mps"]) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"{setting}: {spec} requested but no CUDA GPU is visible; use auto or cpu"])
    return device


def enable_tf32(device: torch.device) -> None:
    """fp32 matmuls outside autocast run on TF32 tensor cores (Ampere and later): the usual training trade."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


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


def low_precision_dtype(precision: str) -> torch.dtype | None:
    """The dtype of a bf16 or fp16 run's weights that need no fp32 copy (frozen ones); None for fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


SHORT_ATTENTION = 128  # positions: up to here a CPU attends through SDPA's math kernel (see `attention_kernels`)


def attention_kernels(device: torch.device, positions: int) -> contextlib.AbstractContextManager:
    """SDPA's math kernel on a CPU for sequences of at most SHORT_ATTENTION positions. The CPU flash kernel's backward has
    a fixed cost per sequence and head: at 32 sequences of 37 positions it took 1.2 s of a 4.3 s LoRA forward and backward
    of the embedded default, which the math kernel saves; at 4 x 256 positions flash was already the faster, and it holds
    no T x T scores. Its choice holds for the forward run inside it: a backward that recomputes the forward (gradient
    checkpointing) must not rely on it."""
    if device.type != "cpu" or positions > SHORT_ATTENTION:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


# peak dense bf16 tensor throughput (TFLOP/s) by GPU name, for model FLOPs utilization
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.0, "L40": 181.0, "A10G": 70.0, "A10": 125.0, "L4": 121.0, "RTX 4090": 165.0, "RTX 3090": 71.0,
                    "V100": 125.0, "T4": 65.0}


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """FLOP/s the device could do at best in bf16; None where unknown (CPUs, unlisted GPUs)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in sorted(PEAK_BF16_TFLOPS.items(), key=lambda item: -len(item[0])):
        if key in name:
            return tflops * 1e12
    return None


def flops_per_token(config, parameters: int, sequence_length: int) -> float:
    """Training FLOPs per token, 6N + 12·L·H·Q·T (weights forward and backward, plus attention scores)."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    return 6 * parameters + 12 * layers * heads * head_dim * sequence_length


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def with_oom_backoff(attempt: Callable[[int], T], size: int, device: torch.device, on_retry: Callable[[int], None],
                     on_floor: Callable[[], Exception], cleanup: Callable[[], None] = lambda: None) -> tuple[T, int]:
    """`attempt(size)`, halving `size` after each out-of-memory until it fits; the result and the size that fit.

    `cleanup` runs after every failed attempt (dropping half-made gradients), then the device's cache
    is freed; at size 1 the error `on_floor()` returns is raised. Other errors pass through.
    """
    while True:
        try:
            return attempt(size), size
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            cleanup()
            free_memory(device)
            if size == 1:
                raise on_floor() from None
            size = max(1, size // 2)
            on_retry(size)


def http_address(host: str, port: int) -> str:
    """The address a browser or client takes: an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_address(host: str, port: int) -> None:
    """Refuse, in one line, an address this machine cannot listen on (`serve`, `ui`), before uvicorn would log its own
    error and exit with code 3."""
    import socket

    if not 1 <= port <= 65535:  # 0 would be a port the system picks, which no printed address or Host check could name
        raise UserError(f"--port {port}: a port is a number from 1 to 65535; pass another --port")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except (OSError, OverflowError, UnicodeError) as exc:
        raise UserError(f"--host {host} --port {port}: {getattr(exc, 'strerror', None) or exc}; pass another --port (or --host)") from None
