"""Jobs in, text out: the rows being decoded, each a choice of a job, advanced together one token per step.

A `Job` is one prompt with its settings, `n` choices, stop strings, seed and deadline; it reports through its
`send` callback: ("text", choice, piece), ("end", choice, finish_reason, tokens, token_ids, stop_id), ("done", prompt_tokens,
completion_tokens) or ("error", status, message). The `Decoder` owns the batch and is driven by one owner:
`decode_all` here, for a list of jobs known in advance, or the serve worker's thread, for requests that arrive.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from ..errors import is_out_of_memory
from .batch import RunningBatch
from .sampling import RepeatedNgrams, RowSampler, SamplingSettings
from .text import ChoiceText

Event = tuple


@dataclass
class Job:
    """One prompt: how many choices, how each is sampled and ended, and where its events go."""

    prompt: list[int]
    settings: SamplingSettings
    max_tokens: int
    send: Callable[[Event], None]
    n: int = 1
    stops: list[str] = field(default_factory=list)
    seed: int | None = None  # choice i draws from its own generator seeded with seed + i
    deadline: float = float("inf")
    cancelled: bool = False
    closed: bool = False  # its last event was sent
    ended: int = 0
    completion_tokens: int = 0

    def fail(self, status: int, message: str) -> None:
        if not self.closed:
            self.closed = True
            self.send(("error", status, message))


@dataclass
class Choice:
    job: Job
    index: int
    text: ChoiceText
    generator: torch.Generator | None
    ngrams: RepeatedNgrams | None = None
    tokens: int = 0
    done: bool = False

    @property
    def prompt(self) -> list[int]:
        return self.job.prompt

    @property
    def generated(self) -> list[int]:
        return self.text.tokens

    def banned(self) -> list[int]:
        return self.ngrams.banned() if self.ngrams is not None else []


def derived_seed(seed: int, *keys: int) -> int:
    """An independent seed for one prompt of a file, the same whatever the batch it shares."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


class Decoder:
    """The running choices and their batch. `prefill` adds jobs, `step` advances every row by a token,
    `drop_finished` lets ended rows go. An error ends the jobs it touched; the decoder goes on."""

    def __init__(self, model, tokenizer, stop_ids: Iterable[int]):
        self.model, self.tokenizer, self.stop_ids = model, tokenizer, set(stop_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.device = next(model.parameters()).device
        self.rows: list[Choice] = []
        self.batch = RunningBatch(model)
        self.sampler: RowSampler | None = None

    def can_join(self) -> bool:
        return self.batch.can_join()

    def prefill(self, jobs: list[Job]) -> None:
        """Add `jobs` to the batch with their first tokens. Whatever fails here fails these jobs alone: rows they
        stacked onto the batch are taken off again, and the running rows go on."""
        jobs = [job for job in jobs if self._startable(job)]
        if not jobs:
            return
        before = self.batch.rows
        try:
            new = [self._choice(job, index) for job in jobs for index in range(job.n)]
            logits = self.batch.prefill([job.prompt for job in jobs], [job.n for job in jobs], self.pad_id)
            first = RowSampler([c.job.settings for c in new], [c.generator for c in new], logits.shape[-1], self.device)
            tokens = first.choose(first.penalize(logits, new))
            self.batch.extend_last(tokens)
        except Exception as exc:
            for job in jobs:
                job.fail(500, f"generation failed: {failure_reason(exc)}")
            self._restore(before)
            return
        self.rows += new
        self.sampler = None
        for choice, token in zip(new, tokens):
            self._accept(choice, token)

    def step(self) -> None:
        """One token for every row; a failed forward or draw ends every job in the batch, whose cache it leaves unusable."""
        try:
            logits = self.batch.step()
            if self.sampler is None:
                self.sampler = RowSampler([c.job.settings for c in self.rows], [c.generator for c in self.rows],
                                          logits.shape[-1], self.device)
            tokens = self.sampler.choose(self.sampler.penalize(logits, self.rows))
            self.batch.set_last(tokens)
        except Exception as exc:
            self.fail_all(500, f"generation failed: {failure_reason(exc)}")
            return
        for choice, token in zip(self.rows, tokens):
            self._accept(choice, token)

    def drop_finished(self) -> None:
        now = time.monotonic()
        for choice in self.rows:
            if now > choice.job.deadline and not choice.job.closed:
                choice.job.fail(504, "the request ran past the server's time limit; ask for fewer tokens")
        keep = [row for row, c in enumerate(self.rows) if not (c.done or c.job.closed or c.job.cancelled)]
        if len(keep) != len(self.rows):
            try:
                self.batch.keep(keep)
            except Exception as exc:
                self.fail_all(500, f"generation failed: {failure_reason(exc)}")
                return
            self.rows = [self.rows[row] for row in keep]
            self.sampler = None

    def fail_all(self, status: int, message: str) -> None:
        """End every running job; the batch is emptied first, so it is ready for the next even if a job's callback fails."""
        rows, self.rows, self.sampler = self.rows, [], None
        self.batch.reset()
        for choice in rows:
            choice.job.fail(status, message)

    def running_jobs(self) -> int:
        return len({id(c.job) for c in self.rows})

    def _startable(self, job: Job) -> bool:
        """An empty prompt has no position to predict from; callers refuse it first, this keeps the batch safe if one does not."""
        if job.prompt:
            return True
        job.fail(400, "the prompt is empty once tokenized; send some text to continue")
        return False

    def _restore(self, rows: int) -> None:
        """Take rows stacked by a failed prefill off the batch again; if even that fails, end every job."""
        try:
            if self.batch.rows != rows:
                self.batch.keep(list(range(rows)))
        except Exception as exc:
            self.fail_all(500, f"generation failed: {failure_reason(exc)}")

    def _choice(self, job: Job, index: int) -> Choice:
        generator = None
        if job.seed is not None and job.settings.temperature > 0:
            # the bounds checked at the edge keep seed + index within a generator's 64 bits; the modulo keeps any caller's too
            generator = torch.Generator(device=self.device).manual_seed((job.seed + index) % 2**64)
        size = job.settings.no_repeat_ngram
        return Choice(job, index, ChoiceText(self.tokenizer, job.stops), generator, RepeatedNgrams(size, job.prompt) if size else None)

    def _accept(self, choice: Choice, token: int) -> None:
        """One new token for one choice: its text, and whether it ends here; an error ends only its own job."""
        job = choice.job
        if choice.done or job.closed:
            return
        try:
            choice.tokens += 1
            job.completion_tokens += 1
            if token in self.stop_ids:
                return self._end(choice, "stop", token)
            if choice.ngrams is not None:
                choice.ngrams.add(token)
            piece = choice.text.add(token)
            if piece:
                job.send(("text", choice.index, piece))
            if choice.text.stopped:
                self._end(choice, "stop")
            elif choice.tokens >= job.max_tokens:
                self._end(choice, "length")
        except Exception as exc:
            job.fail(500, f"generation failed: {failure_reason(exc)}")

    def _end(self, choice: Choice, reason: str, stop_id: int | None = None) -> None:
        """`stop_id`: the stop token that ended the choice (not among its token ids), None when a stop string or the length did."""
        choice.done = True
        job = choice.job
        rest = choice.text.rest()
        if rest:
            job.send(("text", choice.index, rest))
        job.send(("end", choice.index, reason, choice.tokens, list(choice.generated), stop_id))
        job.ended += 1
        if job.ended == job.n:
            job.closed = True
            job.send(("done", len(job.prompt), job.completion_tokens))


def take_fitting(waiting: deque, decoder: Decoder, max_batch: int) -> list[Job]:
    """The jobs at the head of `waiting` whose rows fit beside the running ones, taken off it in order; a job with more
    rows than the whole batch runs alone. The one admission rule of `decode_all` and `tunesmith serve`'s worker."""
    taken: list[Job] = []
    if not decoder.can_join():
        return taken
    rows = len(decoder.rows)
    while waiting and (rows + waiting[0].n <= max_batch or rows == 0):
        taken.append(waiting.popleft())
        rows += taken[-1].n
    return taken


def decode_all(decoder: Decoder, jobs: Iterable[Job], max_batch: int = 16) -> None:
    """Run `jobs` to their ends in the order given, each joining the batch as soon as its rows fit."""
    waiting = deque(jobs)
    with torch.inference_mode():
        while waiting or decoder.rows:
            taken = take_fitting(waiting, decoder, max_batch)
            if taken:
                decoder.prefill(taken)
                decoder.drop_finished()
            if decoder.rows:
                decoder.step()
                decoder.drop_finished()


def failure_reason(exc: Exception) -> str:
    if is_out_of_memory(exc):
        return "out of memory; send fewer or shorter prompts"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
