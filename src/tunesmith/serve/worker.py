"""The one generation worker: a thread that owns the model, takes requests from a bounded queue, and decodes
every running request together, one token per step, with new requests joining between steps.

Requests never hold a lock and never wait on one another's threads: the HTTP side puts a `Job` in the
queue and reads its events (text pieces, ends, errors) from a callback the worker calls. A request whose
client went away is marked cancelled and leaves the batch at the next step; an error ends the requests
it touched and the worker goes on; each request has a deadline; `stop()` ends everything within a step.

transformers' own continuous batching (`generate_batch`, 5.x) is not used: it samples with one global
draw and takes only temperature, top-k and top-p per request, so per-request seeds and penalties could not
share its batches.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from .batch import RunningBatch
from .sampling import RowSampler, SamplingSettings
from .text import ChoiceText

Event = tuple  # ("text", choice, piece) | ("end", choice, finish_reason, tokens) | ("done", prompt, completion) | ("error", status, message)


class QueueFull(Exception):
    """Every place in the queue is taken: the server answers 503 with Retry-After."""


class ShuttingDown(Exception):
    pass


@dataclass
class Job:
    """One request: its prompt, how many choices, how each is sampled and ended, and where its events go."""

    prompt: list[int]
    settings: SamplingSettings
    max_tokens: int
    send: Callable[[Event], None]
    n: int = 1
    stops: list[str] = field(default_factory=list)
    seed: int | None = None
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
    tokens: int = 0
    done: bool = False


class GenerationWorker:
    def __init__(self, model, tokenizer, stop_ids: list[int], max_batch: int = 16, queue_size: int = 64,
                 stall_seconds: float = 120.0):
        self.model, self.tokenizer, self.stop_ids = model, tokenizer, set(stop_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.device = next(model.parameters()).device
        self.max_batch, self.queue_size, self.stall_seconds = max_batch, queue_size, stall_seconds
        self.waiting: deque[Job] = deque()
        self.rows: list[Choice] = []
        self.batch = RunningBatch(model)
        self.sampler: RowSampler | None = None
        self.condition = threading.Condition()
        self.stopping = False
        self.beat = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="tunesmith-generation", daemon=True)

    # --- the HTTP side ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.condition:
            if self.stopping:
                raise ShuttingDown()
            if len(self.waiting) >= self.queue_size:
                raise QueueFull()
            self.waiting.append(job)
            self.condition.notify()

    def stop(self, timeout: float = 2.0) -> None:
        """End every queued and running request with an error, and let the thread finish its step."""
        with self.condition:
            self.stopping = True
            for job in [*self.waiting, *(choice.job for choice in list(self.rows))]:
                job.fail(503, "the server is shutting down")
            self.waiting.clear()
            self.condition.notify()
        self.thread.join(timeout)

    def health(self) -> dict:
        alive = self.thread.is_alive()
        silent = time.monotonic() - self.beat
        stuck = bool(self.rows or self.waiting) and silent > self.stall_seconds
        return {"ok": alive and not stuck and not self.stopping, "worker_alive": alive, "stuck": stuck,
                "queued": len(self.waiting), "running": len({id(c.job) for c in self.rows}), "rows": len(self.rows),
                "max_batch": self.max_batch, "seconds_since_progress": round(silent, 1)}

    # --- the worker thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while not self.stopping:
                self.beat = time.monotonic()
                jobs = self._admit()
                if jobs:
                    self._prefill(jobs)
                if self.rows:
                    self._decode()
                    self._drop_finished()
        for choice in self.rows:
            choice.job.fail(503, "the server is shutting down")
        self.rows = []

    def _admit(self) -> list[Job]:
        """The waiting jobs that fit in the batch now; waits briefly when there is nothing to do."""
        with self.condition:
            if not self.rows and not self.waiting:
                self.condition.wait(0.25)
            now = time.monotonic()
            for job in [j for j in self.waiting if j.cancelled or now > j.deadline]:
                self.waiting.remove(job)
                if not job.cancelled:
                    job.fail(504, "the request waited past the server's time limit; try again, or ask for fewer tokens")
            if not self.batch.can_join():
                return []
            taken, rows = [], len(self.rows)
            while self.waiting and rows + self.waiting[0].n <= self.max_batch:
                job = self.waiting.popleft()
                taken.append(job)
                rows += job.n
            return taken

    def _prefill(self, jobs: list[Job]) -> None:
        try:
            logits = self.batch.prefill([job.prompt for job in jobs], [job.n for job in jobs], self.pad_id)
        except Exception as exc:  # the running batch is untouched: only these requests fail
            for job in jobs:
                job.fail(500, f"generation failed: {_reason(exc)}")
            return
        new = [Choice(job, index, ChoiceText(self.tokenizer, job.stops), self._generator(job, index))
               for job in jobs for index in range(job.n)]
        first = RowSampler([c.job.settings for c in new], [c.generator for c in new], logits.shape[-1], self.device)
        tokens = first.choose(logits)
        self.batch.extend_last(tokens)
        self.rows += new
        self.sampler = None
        for choice, token in zip(new, tokens):
            self._accept(choice, token)

    def _decode(self) -> None:
        try:
            logits = self.batch.step()
        except Exception as exc:  # a failed forward leaves the cache unusable: end every request in it
            for choice in self.rows:
                choice.job.fail(500, f"generation failed: {_reason(exc)}")
            self.rows, self.sampler = [], None
            self.batch.reset()
            return
        if self.sampler is None:
            self.sampler = RowSampler([c.job.settings for c in self.rows], [c.generator for c in self.rows], logits.shape[-1],
                                      self.device)
        if self.sampler.penalized:
            logits = self.sampler.penalize(logits, self._counts(logits.shape[-1]))
        tokens = self.sampler.choose(logits)
        self.batch.set_last(tokens)
        for choice, token in zip(self.rows, tokens):
            self._accept(choice, token)

    def _accept(self, choice: Choice, token: int) -> None:
        """One new token for one choice: its text, and whether it ends here; an error ends only its own request."""
        job = choice.job
        if choice.done or job.closed:
            return
        try:
            choice.tokens += 1
            job.completion_tokens += 1
            if token in self.stop_ids:
                return self._end(choice, "stop")
            piece = choice.text.add(token)
            if piece:
                job.send(("text", choice.index, piece))
            if choice.text.stopped:
                self._end(choice, "stop")
            elif choice.tokens >= job.max_tokens:
                self._end(choice, "length")
        except Exception as exc:
            job.fail(500, f"generation failed: {_reason(exc)}")

    def _end(self, choice: Choice, reason: str) -> None:
        choice.done = True
        job = choice.job
        rest = choice.text.rest()
        if rest:
            job.send(("text", choice.index, rest))
        job.send(("end", choice.index, reason, choice.tokens))
        job.ended += 1
        if job.ended == job.n:
            job.closed = True
            job.send(("done", len(job.prompt), job.completion_tokens))

    def _drop_finished(self) -> None:
        now = time.monotonic()
        for choice in self.rows:
            if now > choice.job.deadline and not choice.job.closed:
                choice.job.fail(504, "the request ran past the server's time limit; ask for fewer tokens")
        keep = [row for row, c in enumerate(self.rows) if not (c.done or c.job.closed or c.job.cancelled)]
        if len(keep) != len(self.rows):
            self.batch.keep(keep)
            self.rows = [self.rows[row] for row in keep]
            self.sampler = None

    def _counts(self, vocab: int) -> torch.Tensor:
        """How often each row has generated each token so far, for the frequency and presence penalties."""
        counts = torch.zeros((len(self.rows), vocab), device=self.device)
        for row, choice in enumerate(self.rows):
            if choice.text.tokens:
                ids = torch.tensor(choice.text.tokens, device=self.device)
                counts[row].index_add_(0, ids, torch.ones(len(ids), device=self.device))
        return counts

    def _generator(self, job: Job, index: int) -> torch.Generator | None:
        if job.seed is None or job.settings.temperature == 0:
            return None
        return torch.Generator(device=self.device).manual_seed(job.seed + index)


def _reason(exc: Exception) -> str:
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return "out of memory; send fewer or shorter requests"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
