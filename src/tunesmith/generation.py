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


class ChatSession:
    """A conversation with a model through its chat template: the history grows with each exchange."""

    def __init__(self, model, tokenizer, options: SamplingOptions, system: str | None = None):
        from pathlib import Path

        from .tasks import read_task
        from .tasks.chat import end_of_turn

        if not getattr(tokenizer, "chat_template", None):
            raise UserError("this model has no chat template; fine-tune it with --task chat, or use `tunesmith generate`")
        self.model, self.tokenizer, self.options = model, tokenizer, options
        saved = read_task(Path(getattr(model, "name_or_path", "") or ".")).get("end_of_turn")
        self.stop_ids = list(dict.fromkeys([tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(saved or end_of_turn(tokenizer))]))
        self.system = system
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    @torch.no_grad()
    def reply(self, text: str, streamer=None) -> str:
        """The assistant's answer to `text`, streamed token by token to `streamer` (a transformers streamer) if given."""
        from .tasks.chat import render

        self.history.append({"role": "user", "content": text})
        prompt = render(self.tokenizer, self.messages(), add_generation_prompt=True)
        device = next(self.model.parameters()).device
        input_ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
        sampling = self.options.temperature > 0
        output = self.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=self.options.max_new_tokens,
            do_sample=sampling, temperature=self.options.temperature if sampling else None,
            top_k=self.options.top_k if sampling else None, top_p=self.options.top_p if sampling else None,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_ids, streamer=streamer,
        )
        answer = self.tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer
