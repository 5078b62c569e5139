"""The parts of a causal LM that losses reach into, the decoder stack and the output layer, and how a loss that folds
the output layer in runs its matmuls: over chunks of positions, in the autocast dtype, on rows padded for CUDA."""

from __future__ import annotations

import torch

CUDA_VOCAB_MULTIPLE = 64  # a vocabulary like GPT-2's 50,257 rows sends CUDA's matmuls to slow kernels for unaligned shapes


def chunk_positions(vocab: int, budget: int) -> int:
    """Positions per chunk, so that a chunk's fp32 logits over `vocab` rows stay within `budget` bytes."""
    return max(1, budget // (4 * vocab))


def vocab_multiple(device: torch.device) -> int:
    """Rows the output weight is padded to a multiple of for the chunk matmuls (with zeros, never scored)."""
    return CUDA_VOCAB_MULTIPLE if device.type == "cuda" else 1


def padded_rows(weight: torch.Tensor, multiple: int) -> torch.Tensor:
    """The output weight with zero rows added up to a multiple of `multiple` (the weight itself when it is one)."""
    return torch.nn.functional.pad(weight, (0, 0, 0, -weight.shape[0] % multiple)) if weight.shape[0] % multiple else weight


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the output layer's matmul runs in: autocast's where it is on, as in the model's own forward."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


LOGIT_MULTIPLIERS = ("logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")  # config keys that scale
                                                                                                 # logits after the layer


def scales_logits(config) -> bool:
    """Whether the model changes its logits after the output layer: soft-capping, or a multiplier other than 1 (in its
    config or, for a multimodal one, its text model's)."""
    configs = [config, config.get_text_config()] if hasattr(config, "get_text_config") else [config]
    return any(bool(getattr(c, "final_logit_softcapping", None))
               or any(getattr(c, name, None) not in (None, 1, 1.0) for name in LOGIT_MULTIPLIERS) for c in configs)


def output_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """The decoder stack and the output layer of a plain (or LoRA-wrapped) causal LM, when the loss can be fused.

    None for what the fused loss cannot reproduce: a classification head, an output layer with a bias
    or a scaling of its own (logit soft-capping, Cohere's logit_scale, Granite's logits_scaling), or a model without
    the usual parts.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    backbone = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    config = getattr(inner, "config", None)
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or backbone is None or backbone is inner:
        return None
    if type(head) is not torch.nn.Linear or scales_logits(config):
        return None
    return backbone, head
