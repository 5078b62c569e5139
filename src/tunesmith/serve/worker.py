"""The one generation worker: a thread that owns the model, takes requests from a bounded queue, and decodes
every running request together, one token per step, with new requests joining between steps.

Requests never hold a lock and never wait on one another's threads: the HTTP side puts a `Job` in the
queue and reads its events (text pieces, ends, errors) from a callback the worker calls. A request whose
client went away is marked cancelled and leaves the batch at the next step; an error ends the requests
it touched and the worker goes on, and a failure outside any request restarts the loop (logged), so the thread
never dies while the server runs; each request has a deadline, which the HTTP side enforces too, whatever the
worker does; `stop()` ends everything within a step.
The decoding itself is `decoding.Decoder`, the same that `generate`, `chat` and training samples use.

transformers' own continuous batching (`generate_batch`, 5.x) is not used: it samples with one global
draw and takes only temperature, top-k and top-p per request, so per-request seeds and penalties could not
share its batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import torch

from ..decoding import Decoder, Job, take_fitting

__all__ = ["GenerationWorker", "Job", "QueueFull", "ShuttingDown"]

log = logging.getLogger("tunesmith.serve")
FAILING_WINDOW = 10.0  # seconds: failures closer than this count as one run of failures
FAILING_AFTER = 3  # failures in a row before /health says unavailable


class QueueFull(Exception):
    """Every place in the queue is taken: the server answers 503 with Retry-After."""


class ShuttingDown(Exception):
    """The worker takes no more requests: the server is stopping (or, against every guard, its thread has ended)."""


class GenerationWorker:
    def __init__(self, model, tokenizer, stop_ids: list[int], max_batch: int = 16, queue_size: int = 64,
                 stall_seconds: float = 120.0):
        self.decoder = Decoder(model, tokenizer, stop_ids)
        self.max_batch, self.queue_size, self.stall_seconds = max_batch, queue_size, stall_seconds
        self.waiting: deque[Job] = deque()
        self.condition = threading.Condition()
        self.stopping = False
        self.starting: list[Job] = []  # admitted, not yet in the batch: a failure between the two must still end them
        self.restarts = 0
        self.failing = 0  # failures in a row, each within FAILING_WINDOW of the one before
        self.failed_at = float("-inf")
        self.beat = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="tunesmith-generation", daemon=True)

    # --- the HTTP side ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.condition:
            if self.stopping:
                raise ShuttingDown("the server is shutting down")
            if self.thread.ident is not None and not self.thread.is_alive():
                raise ShuttingDown("the generation worker has stopped; restart the server")
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
        failing = self.failing >= FAILING_AFTER and time.monotonic() - self.failed_at < FAILING_WINDOW
        return {"ok": alive and not stuck and not failing and not self.stopping, "worker_alive": alive, "stuck": stuck,
                "failing": failing,
                "queued": len(self.waiting), "running": len({id(c.job) for c in list(rows)}), "rows": len(rows),
                "max_batch": self.max_batch, "seconds_since_progress": round(silent, 1), "restarts": self.restarts}

    # --- the worker thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        """The loop, started again after any failure outside a request: while the server runs, the worker cannot die."""
        while not self.stopping:
            try:
                self._loop()
            except Exception:
                self._count_failure()
                self._recover()
                with self.condition:  # a failure that repeats must not spin a core; `stop()` still wakes it
                    self.condition.wait(min(0.05 * 2 ** (self.failing - 1), 5.0))
        _quietly(self.decoder.fail_all, 503, "the server is shutting down")

    def _count_failure(self) -> None:
        """Logged with its traceback the first time, then at the 2nd, 4th, 8th... failure in a row, so one that
        repeats cannot fill the log; /health says unavailable while failures keep coming."""
        now = time.monotonic()
        self.failing = self.failing + 1 if now - self.failed_at < FAILING_WINDOW else 1
        self.failed_at = now
        if self.failing & (self.failing - 1) == 0:
            log.exception("the generation loop failed outside any request (%d in a row); its running requests end with an "
                          "error, and it starts again", self.failing)
        self.restarts += 1

    def _loop(self) -> None:
        decoder = self.decoder
        with torch.inference_mode():
            while not self.stopping:
                self.beat = time.monotonic()
                self.starting = self._admit()
                if self.starting:
                    decoder.prefill(self.starting)
                self.starting = []
                if decoder.rows:
                    decoder.step()
                    decoder.drop_finished()

    def _recover(self) -> None:
        """End the requests the failed loop held, and leave an empty batch for the next."""
        message = "generation failed: an internal error in the generation worker; try again"
        starting, self.starting = self.starting, []
        for job in starting:
            _quietly(job.fail, 500, message)
        _quietly(self.decoder.fail_all, 500, message)

    def _admit(self) -> list[Job]:
        """The waiting jobs that fit in the batch now; waits briefly when there is nothing to do."""
        with self.condition:
            if not self.decoder.rows and not self.waiting:
                self.condition.wait(0.25)
            now = time.monotonic()
            for job in [j for j in self.waiting if j.cancelled or now > j.deadline]:
                self.waiting.remove(job)
                if not job.cancelled:
                    _quietly(job.fail, 504, "the request waited past the server's time limit; try again, or ask for fewer tokens")
            self.starting = take_fitting(self.waiting, self.decoder, self.max_batch)  # held where `_recover` finds them
            return self.starting


def _quietly(call, *args) -> None:
    """A request that cannot be told of a failure is ended by its own time limit; the worker goes on regardless."""
    try:
        call(*args)
    except Exception:
        log.exception("a request could not be told of a failure")
