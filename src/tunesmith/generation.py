"""Text generation from a model or a run: greedy or sampled, plain or through the chat template."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError
from .models import context_length, load_model, load_tokenizer, resolve_model
from .runtime import pick_device


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


def generate_options(tokenizer, input_ids: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
                     top_p: float | None, stop_ids: list[int] | int, streamer=None) -> dict:
    """Keyword arguments for `model.generate`: greedy at temperature 0, sampling otherwise."""
    sampling = temperature > 0
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "max_new_tokens": max_new_tokens,
            "do_sample": sampling, "temperature": temperature if sampling else None, "top_k": top_k if sampling else None,
            "top_p": top_p if sampling else None, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": stop_ids,
            "streamer": streamer}


def check_fits_context(model, prompt_tokens: int, max_new_tokens: int) -> None:
    """A prompt plus its continuation must fit the model's context; past it, positions have no embedding."""
    context = context_length(model.config)
    if context and prompt_tokens + max_new_tokens > context:
        raise UserError(f"the prompt is {prompt_tokens:,} tokens and --max-new-tokens {max_new_tokens:,}: together past the model's "
                        f"context of {context:,} tokens; shorten the prompt or lower --max-new-tokens")


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str, options: SamplingOptions = SamplingOptions()) -> str:
    """The continuation of `prompt` only (the prompt itself is not repeated)."""
    if options.temperature < 0 or options.max_new_tokens < 1:
        raise UserError("generation needs --temperature >= 0 and --max-new-tokens >= 1")
    device = next(model.parameters()).device
    input_ids = _prompt_ids(tokenizer, prompt, options.chat).to(device)
    check_fits_context(model, input_ids.shape[1], options.max_new_tokens)
    torch.manual_seed(options.seed)
    output = model.generate(**generate_options(tokenizer, input_ids, options.max_new_tokens, options.temperature, options.top_k,
                                               options.top_p, tokenizer.eos_token_id))
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)


class ChatSession:
    """A conversation with a model through its chat template: the history grows with each exchange."""

    def __init__(self, model, tokenizer, options: SamplingOptions, system: str | None = None):
        from .tasks.chat import stop_token_ids

        if not getattr(tokenizer, "chat_template", None):
            raise UserError("this model has no chat template; fine-tune it with --task chat, or use `tunesmith generate`")
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.stop_ids = stop_token_ids(tokenizer, getattr(model, "name_or_path", None))
        torch.manual_seed(options.seed)
        self.system = system
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    @torch.no_grad()
    def reply(self, text: str, streamer=None) -> str:
        """The assistant's answer to `text`, streamed token by token to `streamer` (a transformers streamer) if given."""
        self.history.append({"role": "user", "content": text})
        input_ids = self._prompt_ids()
        options = self.options
        output = self.model.generate(**generate_options(self.tokenizer, input_ids, options.max_new_tokens, options.temperature,
                                                        options.top_k, options.top_p, self.stop_ids, streamer))
        answer = self.tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def _prompt_ids(self) -> torch.Tensor:
        """The conversation as token ids; the oldest exchanges are dropped while it would not fit the context."""
        from .tasks.chat import render

        device, context = next(self.model.parameters()).device, context_length(self.model.config)
        while True:
            prompt = render(self.tokenizer, self.messages(), add_generation_prompt=True)
            input_ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
            if not context or input_ids.shape[1] + self.options.max_new_tokens <= context or len(self.history) <= 1:
                break
            del self.history[:2]
        try:
            check_fits_context(self.model, input_ids.shape[1], self.options.max_new_tokens)
        except UserError:
            self.history.pop()
            raise
        return input_ids.to(device)
