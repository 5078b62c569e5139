"""Plain language modelling: documents packed into blocks, every next token a target (domain adaptation, generation)."""

from __future__ import annotations

import numpy as np

from ..config import MonitorConfig
from .base import Task, TaskKind
from .view import TaskView

PROMPT_TOKENS = 16


class LmTask(Task):
    eval_units = "blocks"
    target_words = "tokens"

    def dataset(self, prepared, split: str, training: bool = False):
        return prepared.split(split, documents_apart=self.packing == "documents")

    def example_lengths(self, dataset) -> None:
        return None

    def reference_pairs(self, val_dataset, tokenizer, count: int, new_tokens: int) -> list[tuple[list[int], str]]:
        """The first PROMPT_TOKENS * 2 tokens of each validation document, and its next `new_tokens` as the reference."""
        tokens = np.asarray(val_dataset.tokens)
        ends = np.flatnonzero(tokens == tokenizer.eos_token_id)
        pairs = []
        for start, end in zip(np.r_[0, ends + 1], np.r_[ends, len(tokens)]):
            cut = start + 2 * PROMPT_TOKENS
            if end - cut >= new_tokens // 2:
                pairs.append((tokens[start:cut].tolist(), tokenizer.decode(tokens[cut:min(end, cut + new_tokens)].tolist(),
                                                                              skip_special_tokens=True)))
            if len(pairs) == count:
                break
        return pairs

    def sample_prompts(self, monitor: MonitorConfig, val_dataset, tokenizer) -> list[str]:
        """The configured prompts, or the first tokens of the first validation documents (each ends with EOS)."""
        if monitor.sample_prompts is not None:
            return monitor.sample_prompts
        tokens = np.asarray(val_dataset.tokens)
        ends = np.flatnonzero(tokens == tokenizer.eos_token_id)
        prompts = []
        for start in np.r_[0, ends + 1][: monitor.sample_count]:
            stop = min(start + PROMPT_TOKENS, ends[ends >= start][0] if (ends >= start).any() else len(tokens))
            text = tokenizer.decode(tokens[start:stop].tolist()).strip()
            if text:
                prompts.append(text)
        return prompts


class LmKind(TaskKind):
    """Plain language modelling as the config decides it: documents joined or kept apart, rehearsal allowed."""

    builds = LmTask
    distills = True
    name = "lm"
    learns = "plain text, for generation and domain adaptation"
    packings = ("joined", "documents")
    rehearses = True


class LmView(TaskView):
    """How a language-model run's results read."""

    name = "lm"
