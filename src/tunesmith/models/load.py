"""Load a resolved model and its tokenizer with plain transformers."""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import UserError, first_line, is_out_of_memory
from .resolve import ResolvedModel

MIN_VOCABULARY = 16  # fewer tokens than a language model's: transformers made the tokenizer up where its files are missing


def damaged_model_error(exc: BaseException, what: str) -> UserError | None:
    """The one line for what transformers or peft raises on files that are damaged or do not fit one another (a config
    field of the wrong type, weights of other shapes than the config's, a `.bin` that is not a pickle, an index naming a
    file that is not one); None for anything else (out of memory, a device or its driver, a missing feature), which is
    raised as it is."""
    import pickle

    from huggingface_hub.errors import StrictDataclassError

    kinds = (TypeError, KeyError, IndexError, AttributeError, ArithmeticError, RuntimeError, EOFError, pickle.UnpicklingError,
             StrictDataclassError)
    if not isinstance(exc, kinds) or isinstance(exc, NotImplementedError) or is_out_of_memory(exc) or \
            re.search(r"cuda|cudnn|cublas|nccl|driver|bitsandbytes", str(exc), re.IGNORECASE):
        return None
    return UserError(f"{what}: its files are damaged or do not fit one another ({type(exc).__name__}: {first_line(exc, 200)}); "
                     "copy or download it again")


def _from_pretrained(factory: Any, resolved: ResolvedModel, **kwargs: Any) -> Any:
    from safetensors import SafetensorError

    try:
        return factory.from_pretrained(
            resolved.path,
            local_files_only=resolved.local_files_only,
            trust_remote_code=resolved.trust_remote_code,
            **kwargs,
        )
    except ValueError as exc:
        if kwargs.get("attn_implementation") == "sdpa" and "scaled_dot_product_attention" in str(exc):
            return _from_pretrained(factory, resolved, **{**kwargs, "attn_implementation": "eager"})  # GPT-Neo and others
        if "trust_remote_code" in str(exc):
            raise UserError(f"model {resolved.spec} needs its own code; set model.trust_remote_code=true if you trust it") from None
        if "Unrecognized configuration class" in str(exc):  # transformers lists every architecture it has: hundreds of names
            if "SequenceClassification" in factory.__name__:
                raise UserError(f"model {resolved.spec}: transformers has no classification head for this architecture; "
                                "train it with label words instead: classify.method=generative") from None
            if "CausalLM" in factory.__name__:
                raise UserError(f"model {resolved.spec}: transformers cannot load this architecture as a causal language model") from None
            raise UserError(f"model {resolved.spec}: {str(exc).split('. Model type should be')[0]}") from None
        if "instantiate the backend tokenizer" in str(exc):
            raise UserError(f"model {resolved.spec}: its tokenizer cannot be built from its files (is tokenizer.json missing?); "
                            "copy the tokenizer files from the model it was made from") from None
        if isinstance(exc, json.JSONDecodeError):
            raise UserError(f"model {resolved.spec}: one of its JSON files (its config, tokenizer or generation config) is "
                            f"damaged ({exc}); copy or download the model again") from None
        raise UserError(f"model {resolved.spec}: {first_line(exc)}") from None
    except OSError as exc:
        raise UserError(f"model {resolved.spec}: cannot load ({str(exc).splitlines()[0]})") from None
    except SafetensorError as exc:
        raise UserError(f"model {resolved.spec}: a weights file is damaged or cut short ({exc}); copy or download it again") from None
    except Exception as exc:
        damaged = damaged_model_error(exc, f"model {resolved.spec}")
        if damaged is None:
            raise
        raise damaged from None


def load_model_config(resolved: ResolvedModel):
    """The model's config alone (no weights): enough to check settings against the architecture early."""
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, resolved)


def load_tokenizer(resolved: ResolvedModel):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, resolved)
    if len(tokenizer) < MIN_VOCABULARY:
        raise UserError(f"model {resolved.spec}: its tokenizer holds {len(tokenizer)} tokens, no language model's (are its "
                        "tokenizer files, such as tokenizer.json, missing?); copy them from the model it was made from")
    limit = tokenizer.model_max_length
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit != limit:
        raise UserError(f"model {resolved.spec}: model_max_length in its tokenizer_config.json is {limit!r}, not a number; "
                        "copy the file from the model it was made from, or remove the field")
    if tokenizer.eos_token_id is None:
        raise UserError(f"model {resolved.spec}: its tokenizer has no end-of-sequence token to separate documents")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(resolved: ResolvedModel, dtype: Any = None, quantize_4bit: bool = False, classifier: bool = False,
               new_head: bool = False, **config_overrides: Any):
    """Load weights in float32 by default: autocast does the low-precision math and keeps fp32 master weights.

    `quantize_4bit` loads an NF4 base through bitsandbytes (CUDA only) for QLoRA; `classifier` loads
    the backbone with a sequence-classification head (a trained one, or with `new_head` one sized by `num_labels` where
    the files hold none or one for another number of labels);
    `config_overrides` change config fields such as dropout rates.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32, "attn_implementation": "sdpa", **config_overrides}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    if new_head:
        kwargs["ignore_mismatched_sizes"] = True  # a trained classifier's head for another number of labels starts anew
    model, loading = _from_pretrained(AutoModelForSequenceClassification if classifier else AutoModelForCausalLM, resolved,
                                      output_loading_info=True, **kwargs)
    missing = {*loading["missing_keys"], *(name for name, *_ in loading.get("mismatched_keys") or ())}
    _refuse_missing_weights(model, missing, resolved.spec, new_head)
    in_own_memory(model)
    contiguous_output_input(model)
    return model


def _refuse_missing_weights(model, missing: Any, spec: str, new_head: bool) -> None:
    """transformers fills weights its files lack with random ones and says so only in its log: a config.json asking for
    more layers than the weights hold would train and serve a model with random blocks, a trained classifier without
    its head would label at random. A new classification head is the one part expected to be missing."""
    backbone = f"{model.base_model_prefix}."
    lacking = sorted(name for name in missing if not new_head or name.startswith(backbone))
    if lacking:
        shown = ", ".join(lacking[:3]) + (", ..." if len(lacking) > 3 else "")
        raise UserError(f"model {spec}: its weights files lack {len(lacking)} of the tensors its config.json describes "
                        f"({shown}), so they would start random; copy or download the model again, or set its config "
                        "back to the one its weights were saved with")


def in_own_memory(model) -> None:
    """Copy the weights out of the files they were read from. Tensors loaded at their stored dtype stay views of the
    memory-mapped safetensors file, and a file truncated or copied over in place (`cp other.safetensors final/...`)
    would then kill the process with SIGBUS at its next read: a page serving the model, or a run training it. One tensor
    at a time; tied weights stay one parameter."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu":
            tensor.data = tensor.data.clone()


def _contiguous(module, args):
    return (args[0].contiguous(), *args[1:]) if args and hasattr(args[0], "contiguous") else None


def contiguous_output_input(model) -> None:
    """Hand the output layer contiguous hidden states. A model asked for the logits of its last positions only
    (`logits_to_keep`) slices them out of the sequence; on a CPU, a matmul of that strided slice copies the whole output
    layer once per row of the batch (32 rows of SmolLM2's 49,152 x 576 layer: 1.8 GB, 2.3 s of a 3.7 s forward in
    bf16) where one copy of the slice costs nothing. Installed once per output layer."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_tunesmith_contiguous", False):
        head.register_forward_pre_hook(_contiguous)
        head._tunesmith_contiguous = True


def fit_embeddings(model, tokenizer) -> None:
    """Room in the embeddings for tokens added to the tokenizer (a chat template's markers), initialized at their mean."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        contiguous_output_input(model)


def beyond_embeddings(model, ids: list[int], what: str = "the prompt") -> str | None:
    """Why `what` cannot be read where it holds a token the model's embeddings have no row for (a tokenizer given
    tokens after the model was saved); None where every token has one."""
    rows = model.get_input_embeddings().num_embeddings
    unknown = next((token for token in ids if token >= rows), None)
    if unknown is None:
        return None
    return (f"{what} holds token {unknown}, one of those this model's tokenizer has beyond its {rows:,} embedding "
            f"rows (tokens added to the tokenizer after the model was saved); leave it out of {what}")


def longest_token(tokenizer) -> int:
    """The most characters one token spells (its vocabulary's longest entry), read once per tokenizer: n tokens of
    text reach at most n times this far, so a text can be cut to the reach of the tokens it may keep before it is
    tokenized (a row of a hundred megabytes would otherwise take gigabytes to tokenize whole)."""
    size, known = getattr(tokenizer, "_tunesmith_longest_token", (None, None))
    if size != len(tokenizer):  # read again once tokens are added
        size = len(tokenizer)
        known = max(len(token or "") for token in tokenizer.convert_ids_to_tokens(list(range(size)))) or 1
        tokenizer._tunesmith_longest_token = (size, known)
    return known


def token_reach(tokenizer, tokens: int) -> int:
    """Characters within which a text's first (or last) `tokens` tokens lie, twice over: a text cut there tokenizes to
    the same first (last) tokens as the whole, since tokenization is local, at a cost set by `tokens`, not by the text."""
    return 2 * tokens * longest_token(tokenizer) + 64


def first_tokens_text(tokenizer, text: str, tokens: int) -> str:
    """As much of `text` as its first `tokens` tokens can come from (`token_reach`)."""
    return text[: token_reach(tokenizer, tokens)]


def context_length(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def count_parameters(config) -> int:
    """Parameters of the architecture, counted on the meta device: no weights are loaded or allocated. A config whose
    class is a model's own code was loaded with model.trust_remote_code, so its model class is taken from there too."""
    import torch
    from transformers import AutoModelForCausalLM

    own_code = type(config).__module__.startswith("transformers_modules")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=own_code)
    return sum(p.numel() for p in model.parameters())
