"""`tunesmith export --gguf`: a finished Llama-family run as one GGUF file for llama.cpp-family runtimes.

Written with the `gguf` package the way llama.cpp's own converter writes Llama models: its tensor
names, the query and key rows permuted for its rotary layout, norms in F32 and matrices in F16 or BF16,
the byte-level BPE vocabulary with its merges and special tokens, and the chat template. The model
loads back in transformers with `gguf_file=...`, which is how the round trip is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "llama"}  # transformers model_type -> GGUF architecture


def _file_types():
    import gguf

    return {"fp32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
            "fp16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
            "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16)}


def rotary_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers rotates the two halves of each head; llama.cpp rotates interleaved pairs: reorder the rows to match."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _source_pre_tokenizer(base: str) -> str | None:
    """The `tokenizer.ggml.pre` of the GGUF the run started from (the embedded model or a .gguf file), if any."""
    import gguf

    from .models.embedded import EMBEDDED_NAME, embedded_gguf_path

    path = embedded_gguf_path() if base == EMBEDDED_NAME else Path(base) if base.endswith(".gguf") else None
    if path is None or not path.is_file():
        return None
    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None


def _vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id (padded to the model's rows), their GGUF types, and the BPE merges."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(backend.get("pre_tokenizer")):
        raise UserError("GGUF export supports byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM, Qwen style); "
                        "use the Hugging Face export for this model")
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = {token.content: token for token in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index, f"[PAD{index}]")
        tokens.append(token)
        if index not in by_id:
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            types.append(gguf.TokenType.CONTROL if added[token].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"].get("merges", [])]
    return tokens, types, merges


def _write_metadata(writer, config, tokenizer, file_type, pre: str | None, name: str) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads or heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or (config.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    tokens, types, merges = _vocabulary(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    if pre:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id), (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.unk_token_id, writer.add_unk_token_id), (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _tensors(model, config):
    """(GGUF name, array, is a matrix) for each weight, in llama.cpp's layout; a tied output layer is left to token_embd."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"GGUF export: no llama.cpp name for {hf_name}; this architecture is not supported")
        tensor = tensor.float()
        if hf_name.endswith("q_proj.weight"):
            tensor = rotary_permute(tensor, heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = rotary_permute(tensor, kv_heads)
        yield name, tensor.numpy(), tensor.ndim == 2


def export_gguf(final: Path, out: Path, dtype: str, base: str, name: str) -> Path:
    """Write `out` (a .gguf file) from the HF model in `final`, matrices in `dtype`."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(final)
    if config.model_type not in GGUF_ARCHITECTURES:
        raise UserError(f"GGUF export supports Llama-family models ({', '.join(GGUF_ARCHITECTURES)}); this run's model is "
                        f"{config.model_type}: use the Hugging Face export (without --gguf)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UserError("GGUF export: this Llama variant has biases that llama.cpp's Llama layout lacks; use the Hugging Face export")
    quant, file_type = _file_types()[dtype]
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(final)
    writer = gguf.GGUFWriter(str(out), GGUF_ARCHITECTURES[config.model_type])
    _write_metadata(writer, config, tokenizer, file_type, _source_pre_tokenizer(base), name)
    for tensor_name, array, matrix in _tensors(model, config):
        if matrix and quant != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, quant), raw_dtype=quant)
        else:
            writer.add_tensor(tensor_name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
