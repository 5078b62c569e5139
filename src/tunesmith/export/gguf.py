"""`tunesmith export --gguf`: a finished run as one GGUF file for llama.cpp-family runtimes.

Written with the `gguf` package the way llama.cpp's own converter writes each architecture: its tensor
names and layouts (Llama's query and key rows permuted for its rotary layout, GPT-2's Conv1D matrices
transposed), the byte-level BPE vocabulary with its merges and special tokens, and the chat template.
Matrices are stored in the asked type: F32, F16, BF16, or quantized with the package's own quantizers
(Q8_0, Q5_0, Q4_0, in blocks of 32 values with one scale each). As in llama.cpp's quantizer, norms and
biases stay F32, a matrix whose rows do not split into blocks falls back to F16, and the embedding and
output matrices, which every token passes through, keep more bits than the rest: Q5_0 in a Q4_0 file, Q8_0
in a Q5_0 file (llama.cpp keeps Q6_K there, which the package cannot write; `benchmarks/bench_gguf.py` has
the sizes and perplexities that chose these). The file loads back in transformers with `gguf_file=...`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..models import ResolvedModel, load_model, load_model_config, load_tokenizer

# --dtype -> (tensor type, file type) names in the gguf package
GGUF_TYPES = {"fp32": ("F32", "ALL_F32"), "f32": ("F32", "ALL_F32"), "fp16": ("F16", "MOSTLY_F16"), "f16": ("F16", "MOSTLY_F16"),
              "bf16": ("BF16", "MOSTLY_BF16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
              "q4_0": ("Q4_0", "MOSTLY_Q4_0")}
EMBEDDING_TENSORS = ("token_embd.weight", "output.weight", "position_embd.weight")


def file_suffix(dtype: str) -> str:
    return GGUF_TYPES[dtype][0]


def tensor_type(name: str, array: np.ndarray, dtype: str):
    """The GGML type one tensor is stored in, for a file of `dtype`."""
    import gguf

    wanted = gguf.GGMLQuantizationType[GGUF_TYPES[dtype][0]]
    if array.ndim < 2 or wanted == gguf.GGMLQuantizationType.F32:
        return gguf.GGMLQuantizationType.F32
    if name in EMBEDDING_TENSORS:
        wanted = {gguf.GGMLQuantizationType.Q4_0: gguf.GGMLQuantizationType.Q5_0,
                  gguf.GGMLQuantizationType.Q5_0: gguf.GGMLQuantizationType.Q8_0}.get(wanted, wanted)
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if array.shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def rotary_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers rotates the two halves of each head; llama.cpp rotates interleaved pairs: reorder the rows to match."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _source_pre_tokenizer(base: str) -> str | None:
    """The `tokenizer.ggml.pre` of the GGUF the run started from (the embedded model or a .gguf file), if any."""
    import gguf

    from ..models.embedded import EMBEDDED_NAME, embedded_gguf_path

    path = embedded_gguf_path() if base == EMBEDDED_NAME else Path(base) if base.endswith(".gguf") else None
    if path is None or not path.is_file():
        return None
    try:
        field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.pre")
        return str(field.contents()) if field is not None else None
    except (ValueError, OSError, KeyError, IndexError, TypeError):  # replaced or damaged since: the layout's own is kept
        return None


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


def _write_tokenizer(writer, tokenizer, vocab_size: int, pre: str | None) -> None:
    tokens, types, merges = _vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    if pre:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id), (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.unk_token_id, writer.add_unk_token_id), (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None and token_id < vocab_size:
            add(token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


class LlamaLayout:
    """Llama, Mistral (and SmolLM, which is a Llama): llama.cpp's `llama` architecture."""

    arch, pre_tokenizer = "llama", None

    def check(self, config) -> None:
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise UserError("GGUF export: this Llama variant has biases that llama.cpp's Llama layout lacks; use the Hugging Face export")

    def hyperparameters(self, writer, config) -> None:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        rope = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(config.num_key_value_heads or heads)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(rope))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))

    def tensor(self, hf_name: str, tensor: torch.Tensor, config) -> torch.Tensor:
        heads = config.num_attention_heads
        if hf_name.endswith("q_proj.weight"):
            return rotary_permute(tensor, heads)
        if hf_name.endswith("k_proj.weight"):
            return rotary_permute(tensor, config.num_key_value_heads or heads)
        return tensor


class QwenLayout(LlamaLayout):
    """Qwen2 (biased query, key and value) and Qwen3 (norms on query and key): llama.cpp's `qwen2` and `qwen3`,
    whose rotary layout is transformers' own, so nothing is permuted."""

    pre_tokenizer = "qwen2"

    def __init__(self, arch: str, read_head_dim: str):
        self.arch, self.read_head_dim = arch, read_head_dim  # the head width transformers' GGUF reader assumes

    def check(self, config) -> None:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        assumed = 128 if self.read_head_dim == "128" else config.hidden_size // config.num_attention_heads
        if head_dim != assumed:
            raise UserError(f"GGUF export: this {self.arch} model's heads are {head_dim} wide, but transformers' GGUF reader "
                            f"assumes {assumed} for {self.arch} and could not read the file back; use the Hugging Face export")

    def hyperparameters(self, writer, config) -> None:
        super().hyperparameters(writer, config)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)

    def tensor(self, hf_name: str, tensor: torch.Tensor, config) -> torch.Tensor:
        return tensor


class GPT2Layout:
    """GPT-2: llama.cpp's `gpt2` architecture, whose matrices are the transpose of transformers' Conv1D weights."""

    arch, pre_tokenizer = "gpt2", "gpt-2"
    TRANSPOSED = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")

    def check(self, config) -> None:
        if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UserError(f"GGUF export: llama.cpp's GPT-2 uses the tanh GELU; this model uses {config.activation_function}")
        if getattr(config, "scale_attn_by_inverse_layer_idx", False) or getattr(config, "reorder_and_upcast_attn", False):
            raise UserError("GGUF export: this GPT-2 variant scales its attention in a way llama.cpp's GPT-2 lacks")

    def hyperparameters(self, writer, config) -> None:
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(float(config.layer_norm_epsilon))

    def tensor(self, hf_name: str, tensor: torch.Tensor, config) -> torch.Tensor:
        return tensor.T.contiguous() if hf_name.endswith(self.TRANSPOSED) else tensor


# transformers model_type -> how llama.cpp lays it out; each is one that transformers also reads back from GGUF
LAYOUTS = {"llama": LlamaLayout(), "mistral": LlamaLayout(), "qwen2": QwenLayout("qwen2", "hidden/heads"),
           "qwen3": QwenLayout("qwen3", "128"),
           "gpt2": GPT2Layout()}


def _tensors(model, config, layout):
    """(GGUF name, float32 array) for each weight in llama.cpp's layout; a tied output layer is left to token_embd."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[layout.arch.upper()], config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"GGUF export: no llama.cpp name for {hf_name}; this variant of {layout.arch} is not supported")
        yield name, layout.tensor(hf_name, tensor.float(), config).numpy()


def export_gguf(final: Path, out: Path, dtype: str, base: str, name: str) -> Path:
    """Write `out` (a .gguf file) from the HF model in `final`, matrices in `dtype` (see GGUF_TYPES)."""
    import gguf

    resolved = ResolvedModel(str(final), str(final), local_files_only=True)
    config = load_model_config(resolved)
    layout = LAYOUTS.get(config.model_type)
    if layout is None:
        raise UserError(f"GGUF export supports {', '.join(LAYOUTS)} models, the architectures both llama.cpp and transformers' GGUF "
                        f"reader share with tunesmith; this run's model is {config.model_type}: use the Hugging Face export (without --gguf)")
    layout.check(config)
    model = load_model(resolved)
    tokenizer = load_tokenizer(resolved)
    writer = gguf.GGUFWriter(str(out), layout.arch)
    writer.add_name(name)
    layout.hyperparameters(writer, config)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType[GGUF_TYPES[dtype][1]])
    _write_tokenizer(writer, tokenizer, config.vocab_size, _source_pre_tokenizer(base) or layout.pre_tokenizer)
    for tensor_name, array in _tensors(model, config, layout):
        kind = tensor_type(tensor_name, array, dtype)
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, array.astype(np.float32))
        else:
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
