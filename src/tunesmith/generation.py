"""Text generation from a model or a run: greedy or sampled, plain or through the chat template."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError
from .models import load_model, load_tokenizer, resolve_model
from .training.hardware import pick_device


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = 100
    temperature: float = 0.7  # 0 means greedy
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 0
    chat: bool = False


def load_generator(spec: str, device: str = "auto", trust_remote_code: bool = False, log=print):
    resolved = resolve_model(spec, trust_remote_code, log=log)
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved).to(pick_device(device)).eval()
    return model, tokenizer


def _prompt_ids(tokenizer, prompt: str, chat: bool) -> torch.Tensor:
    if not chat:
        return tokenizer(prompt, return_tensors="pt").input_ids
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("this model's tokenizer has no chat template; drop --chat to continue plain text")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str, options: SamplingOptions = SamplingOptions()) -> str:
    """The continuation of `prompt` only (the prompt itself is not repeated)."""
    if options.temperature < 0 or options.max_new_tokens < 1:
        raise UserError("generation needs --temperature >= 0 and --max-new-tokens >= 1")
    device = next(model.parameters()).device
    input_ids = _prompt_ids(tokenizer, prompt, options.chat).to(device)
    sampling = options.temperature > 0
    torch.manual_seed(options.seed)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=options.max_new_tokens,
        do_sample=sampling,
        temperature=options.temperature if sampling else None,
        top_k=options.top_k if sampling else None,
        top_p=options.top_p if sampling else None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
