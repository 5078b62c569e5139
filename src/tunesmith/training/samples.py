"""Sample generations at each evaluation: the task's fixed prompts, greedy decoding, so a reader can watch the model change."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..runtime import autocast


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, device: torch.device, stops: list[int],
                     rendered: bool = False, precision: str = "fp32") -> list[dict]:
    """Greedy continuations, under the training precision (frozen weights may be stored in it); rendered (chat)
    prompts already hold their special tokens, so none are added."""
    was_training = model.training
    model.eval()
    samples = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=not rendered).input_ids.to(device)
        with autocast(device, precision):
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
        samples.append({"prompt": prompt, "text": tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)})
    model.train(was_training)
    return samples


class SampleLog:
    def __init__(self, prompts: list[str], stops: list[int], rendered: bool, max_new_tokens: int, path: Path):
        self.prompts, self.stops, self.rendered = prompts, stops, rendered
        self.max_new_tokens = max_new_tokens
        self.path = path

    def write(self, step: int, model, tokenizer, device: torch.device, precision: str) -> list[dict]:
        if not self.prompts:
            return []
        samples = generate_samples(model, tokenizer, self.prompts, self.max_new_tokens, device, self.stops, self.rendered, precision)
        with self.path.open("a") as handle:
            for sample in samples:
                handle.write(json.dumps({"step": step, **sample}) + "\n")
        return samples
