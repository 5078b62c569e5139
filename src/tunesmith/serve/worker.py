"""The one generation worker: a thread that owns the model, takes requests from a bounded queue, and decodes
every running request together, one token per step, with new requests joining between steps.

Requests never hold a lock and never wait on one another's threads: the HTTP side puts a `Job` in the
queue and reads its events (text pieces, ends, errors) from a callback the worker calls. A request whose
client went away is marked cancelled and leaves the batch at the next step; an error ends the requests
it touched and the worker goes on; each request has a deadline; `stop()` ends everything within a step.
The decoding itself is `decoding.Decoder`, the same that `generate`, `chat` and training samples use.

transformers' own continuous batching (`generate_batch`, 5.x) is not used: it samples with one global
draw and takes only temperature, top-k and top-p per request, so per-request seeds and penalties could not
share its batches.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import torch

from ..decoding import Decoder, Job

__all__ = ["GenerationWorker", "Job", "QueueFull", "ShuttingDown"]


class QueueFull(Exception):
    """Every place in the queue is taken: the server answers 503 with Retry-After."""


class ShuttingDown(Exception):
    pass


class GenerationWorker:
    def __init__(self, model, tokenizer, stop_ids: list[int], max_batch: int = 16, queue_size: int = 64,
                 stall_seconds: float = 120.0):
        self.decoder = Decoder(model, tokenizer, stop_ids)
        self.max_batch, self.queue_size, self.stall_seconds = max_batch, queue_size, stall_seconds
        self.waiting: deque[Job] = deque()
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
            for job in [*self.waiting, *(choice.job for choice in list(self.decoder.rows))]:
                job.fail(503, "the server is shutting down")
            self.waiting.clear()
            self.condition.notify()
        self.thread.join(timeout)

    def health(self) -> dict:
        alive = self.thread.is_alive()
        silent = time.monotonic() - self.beat
        rows = self.decoder.rows
        stuck = bool(rows or self.waiting) and silent > self.stall_seconds
        return {"ok": alive and not stuck and not self.stopping, "worker_alive": alive, "stuck": stuck,
                "queued": len(self.waiting), "running": len({id(c.job) for c in list(rows)}), "rows": len(rows),
                "max_batch": self.max_batch, "seconds_since_progress": round(silent, 1)}

    # --- the worker thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        decoder = self.decoder
        with torch.inference_mode():
            while not self.stopping:
                self.beat = time.monotonic()
                jobs = self._admit()
                if jobs:
                    decoder.prefill(jobs)
                if decoder.rows:
                    decoder.step()
                    decoder.drop_finished()
        decoder.fail_all(503, "the server is shutting down")

    def _admit(self) -> list[Job]:
        """The waiting jobs that fit in the batch now; waits briefly when there is nothing to do."""
        with self.condition:
            if not self.decoder.rows and not self.waiting:
                self.condition.wait(0.25)
            now = time.monotonic()
            for job in [j for j in self.waiting if j.cancelled or now > j.deadline]:
                self.waiting.remove(job)
                if not job.cancelled:
                    job.fail(504, "the request waited past the server's time limit; try again, or ask for fewer tokens")
            if not self.decoder.can_join():
                return []
            taken, rows = [], len(self.decoder.rows)
            while self.waiting and rows + self.waiting[0].n <= self.max_batch:
                job = self.waiting.popleft()
                taken.append(job)
                rows += job.n
            return taken
