"""Sample generations at each evaluation: fixed prompts, greedy decoding, so a reader can watch the model change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import MonitorConfig
from ..data import TokenBlocks

PROMPT_TOKENS = 16


def default_prompts(val_blocks: TokenBlocks, tokenizer, count: int) -> list[str]:
    """The first tokens of the first validation documents (documents end with EOS in the token stream)."""
    tokens = np.asarray(val_blocks.tokens)
    ends = np.flatnonzero(tokens == tokenizer.eos_token_id)
    starts = np.r_[0, ends + 1][:count]
    prompts = []
    for start in starts:
        stop = min(start + PROMPT_TOKENS, ends[ends >= start][0] if (ends >= start).any() else len(tokens))
        text = tokenizer.decode(tokens[start:stop].tolist()).strip()
        if text:
            prompts.append(text)
    return prompts


def chat_prompts(cfg: MonitorConfig, val_examples, tokenizer) -> list[str]:
    """Configured prompts as one user turn each, or the validation conversations up to their first assistant turn."""
    from ..tasks.chat import render

    if cfg.sample_prompts is not None:
        return [render(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True) for p in cfg.sample_prompts]
    count = min(cfg.sample_count, len(val_examples))
    return [tokenizer.decode(val_examples.prompt_ids(i).tolist()) for i in range(count)]


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, device: torch.device,
                     chat: bool = False) -> list[dict]:
    """Greedy continuations; chat prompts are already rendered, so no special tokens are added and a turn's end stops them."""
    from ..tasks.chat import stop_token_ids

    was_training = model.training
    model.eval()
    samples = []
    stop = stop_token_ids(tokenizer) if chat else [tokenizer.eos_token_id]
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=not chat).input_ids.to(device)
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=stop)
        samples.append({"prompt": prompt, "text": tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)})
    model.train(was_training)
    return samples


class SampleLog:
    def __init__(self, cfg: MonitorConfig, val_blocks: TokenBlocks, tokenizer, path: Path, task: str = "lm"):
        self.chat = task == "chat"
        if task == "classify":  # the metrics show a classifier's progress; its generations would not
            self.prompts = []
        elif self.chat:
            self.prompts = chat_prompts(cfg, val_blocks, tokenizer)
        else:
            self.prompts = cfg.sample_prompts if cfg.sample_prompts is not None else default_prompts(val_blocks, tokenizer, cfg.sample_count)
        self.max_new_tokens = cfg.sample_tokens
        self.path = path

    def write(self, step: int, model, tokenizer, device: torch.device) -> list[dict]:
        if not self.prompts:
            return []
        samples = generate_samples(model, tokenizer, self.prompts, self.max_new_tokens, device, self.chat)
        with self.path.open("a") as handle:
            for sample in samples:
                handle.write(json.dumps({"step": step, **sample}) + "\n")
        return samples
