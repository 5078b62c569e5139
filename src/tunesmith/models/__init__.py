"""Choose and load a pre-trained causal language model: resolve a spec, load weights and tokenizer."""

from .load import beyond_embeddings, context_length, count_parameters, damaged_model_error, first_tokens_text, fit_embeddings, \
    load_model, load_model_config, load_tokenizer, longest_token, token_reach
from .resolve import ResolvedModel, resolve_model, tunesmith_home

__all__ = ["ResolvedModel", "beyond_embeddings", "context_length", "count_parameters", "damaged_model_error", "first_tokens_text",
           "fit_embeddings", "load_model", "load_model_config", "load_tokenizer", "longest_token", "resolve_model", "token_reach", "tunesmith_home"]
