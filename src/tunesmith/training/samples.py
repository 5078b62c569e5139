"""Sample generations at each evaluation: the task's fixed prompts, greedy decoding, so a reader can watch the model change."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..inference.generation import greedy_samples
from ..runtime import autocast


def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, device: torch.device, stops: list[int],
                     rendered: bool = False, precision: str = "fp32") -> list[dict]:
    """Greedy continuations, under the training precision (frozen weights may be stored in it)."""
    was_training = model.training
    model.eval()
    with autocast(device, precision):
        texts = greedy_samples(model, tokenizer, prompts, max_new_tokens, stops, rendered)
    model.train(was_training)
    return [{"prompt": prompt, "text": text} for prompt, text in zip(prompts, texts)]


class SampleLog:
    def __init__(self, prompts: list[str], stops: list[int], rendered: bool, max_new_tokens: int, path: Path):
        self.prompts, self.stops, self.rendered = prompts, stops, rendered
        self.max_new_tokens = max_new_tokens
        self.path = path

    def write(self, step: int, model, tokenizer, device: torch.device, precision: str) -> list[dict]:
        if not self.prompts:
            return []
        samples = generate_samples(model, tokenizer, self.prompts, self.max_new_tokens, device, self.stops, self.rendered, precision)
        self.append(step, samples)
        return samples

    def append(self, step: int, samples: list[dict]) -> None:
        with self.path.open("a") as handle:
            for sample in samples:
                handle.write(json.dumps({"step": step, **sample}) + "\n")
