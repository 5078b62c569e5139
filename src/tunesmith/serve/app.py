"""The HTTP side of `tunesmith serve`: OpenAI's completions, chat completions (both streaming), models and health.

Handlers are coroutines that check every limit, tokenize (in a worker thread), hand a `Job` to the one
generation worker and relay its events; none of them blocks a thread while it waits. The body is counted
while it is read, by an ASGI middleware that also checks the API key.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import Request

from ..decoding import Job, SamplingSettings
from ..errors import UserError
from ..models import beyond_embeddings
from .body import BodyTooLarge, ClientLeft, read_body, replay
from .schema import ChatRequest, CompletionRequest, RequestError, Sampling, describe_validation
from .worker import GenerationWorker, QueueFull, ShuttingDown

API_KEY_VARIABLE = "TUNESMITH_API_KEY"


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 512
    max_prompt_tokens: int = 2048
    max_body_bytes: int = 1_000_000
    max_n: int = 4
    max_batch: int = 16
    queue_size: int = 64
    request_seconds: float = 300.0
    stall_seconds: float = 120.0


class ServedModel:
    """The model and tokenizer, with what the limits need to know about them, read once."""

    def __init__(self, model, tokenizer, name: str, stop_ids: list[int]):
        from ..models import context_length, longest_token

        self.model, self.tokenizer, self.name, self.stop_ids = model, tokenizer, name, stop_ids
        self.context = context_length(model.config)
        self.longest_token = longest_token(tokenizer)  # a prompt longer than the limit's tokens can spell is refused untokenized

    def encode_completion(self, prompt: str) -> list[int]:
        """A completion's prompt as the tokenizer reads it, control tokens included: the model's raw input."""
        return self.tokenizer(prompt).input_ids

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """A chat's messages through the template, their contents read as text."""
        from ..tasks.chat import conversation_ids

        return conversation_ids(self.tokenizer, messages)


def _authorized(header: str, key: str) -> bool:
    scheme, _, token = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


class Guard:
    """ASGI middleware: the API key, then the body read with a running count, refused past `limit` bytes with 413."""

    def __init__(self, app, limit: int, api_key: str | None):
        self.app, self.limit, self.api_key = app, limit, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and scope["path"] != "/health" and not _authorized(headers.get("authorization", ""), self.api_key):
            return await _send_error(send, RequestError(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                                        "authentication_error"))
        try:
            body = await read_body(scope, receive, self.limit)
        except ClientLeft:
            return
        except BodyTooLarge as exc:
            return await _send_error(send, RequestError(413, str(exc)))
        await self.app(scope, replay(body, receive), send)


async def _send_error(send, error: RequestError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *((k.lower().encode(), str(v).encode()) for k, v in error.headers.items())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ClientGone(Exception):
    pass


class PastDeadline(Exception):
    """The request's time limit passed with no event from the worker: the HTTP side ends it, whatever the worker does."""


TIME_LIMIT = "the request ran past the server's time limit (--request-timeout); try again, or ask for fewer tokens"


class Relay:
    """One request's events from the worker thread, read on the event loop; notices the client leaving."""

    def __init__(self, request):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.request = request
        self.watcher: asyncio.Task | None = None

    def put(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop has closed: the server is gone
            pass

    async def _disconnected(self) -> None:
        while (await self.request.receive())["type"] != "http.disconnect":
            pass

    async def next(self, deadline: float):
        """The next event; ClientGone if the client leaves first, PastDeadline if `deadline` (monotonic) passes first."""
        if self.watcher is None:
            self.watcher = asyncio.ensure_future(self._disconnected())
        if not self.queue.empty():
            return self.queue.get_nowait()
        getting = asyncio.ensure_future(self.queue.get())
        await asyncio.wait({getting, self.watcher}, timeout=max(0.0, deadline - time.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
        if getting.done():
            return getting.result()
        getting.cancel()
        if self.watcher.done():
            raise ClientGone()
        raise PastDeadline()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()


def create_app(served: ServedModel, limits: Limits = Limits(), api_key: str | None = None):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    worker = GenerationWorker(served.model, served.tokenizer, served.stop_ids, limits.max_batch, limits.queue_size,
                              limits.stall_seconds)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.worker = worker

    def error(exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error(RequestError(400, describe_validation(exc.errors())))

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        return error(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(RequestError(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else "invalid_request_error"))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        return error(RequestError(500, f"internal error: {type(exc).__name__}", "server_error"))

    @app.get("/health")
    async def health():
        state = worker.health()
        return JSONResponse({"status": "ok" if state["ok"] else "unavailable", "model": served.name, **state},
                            status_code=200 if state["ok"] else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": 0, "owned_by": "tunesmith"}]}

    async def start_job(body: CompletionRequest | ChatRequest, text: str, encode, request) -> tuple[Job, Relay]:
        """Check every limit, tokenize the prompt (`encode()`, off the event loop; `text` is the prompt as the model will
        read it, checked before), and queue the job: all before any byte of the answer is sent."""
        if body.n > limits.max_n:
            raise RequestError(400, f"n is {body.n}; this server returns at most {limits.max_n} choices")
        if len(text) > limits.max_prompt_tokens * served.longest_token:
            raise RequestError(400, f"the prompt is {len(text):,} characters, more than {limits.max_prompt_tokens:,} tokens "
                                    "can spell; shorten it")
        if _unpaired_surrogate(text):
            raise RequestError(400, "the prompt holds an unpaired UTF-16 surrogate, which is not text; send valid Unicode")
        try:
            prompt = await run_in_threadpool(encode)
        except UserError as exc:
            raise RequestError(400, str(exc)) from None
        unknown = beyond_embeddings(served.model, prompt)
        if unknown:
            raise RequestError(400, unknown)
        if not prompt:
            raise RequestError(400, "prompt: empty once tokenized, and this model's tokenizer adds no start token; send some "
                                    "text to continue (tunesmith generate refuses it too)")
        if len(prompt) > limits.max_prompt_tokens:
            raise RequestError(400, f"the prompt has {len(prompt):,} tokens; this server takes at most {limits.max_prompt_tokens:,}")
        wanted = body.wanted_tokens
        if wanted is not None and wanted > limits.max_tokens:
            raise RequestError(400, f"{body.wanted_field} is {wanted:,}; this server allows at most {limits.max_tokens:,}")
        room = served.context - len(prompt) if served.context else limits.max_tokens
        max_tokens = wanted or min(limits.max_tokens, room)
        if room < 1:
            raise RequestError(400, f"the prompt ({len(prompt):,} tokens) fills the model's context of {served.context:,} tokens "
                                    "and leaves no room to answer; shorten the prompt")
        if max_tokens > room:
            raise RequestError(400, f"the prompt ({len(prompt):,} tokens) and {body.wanted_field} ({max_tokens:,}) do not fit "
                                    f"the model's context of {served.context:,} tokens; shorten the prompt or lower "
                                    f"{body.wanted_field}")
        relay = Relay(request)
        settings = SamplingSettings(body.temperature, body.top_p, body.top_k, body.frequency_penalty, body.presence_penalty,
                                    body.repetition_penalty)
        job = Job(prompt, settings, max_tokens, relay.put, body.n, body.stops, body.seed,
                  time.monotonic() + limits.request_seconds)
        try:
            worker.submit(job)
        except QueueFull:
            seconds = max(1, round(worker.health()["queued"] * 0.5))
            raise RequestError(503, f"the server is busy ({limits.queue_size} requests waiting); retry in {seconds} s",
                               "server_busy", {"Retry-After": str(seconds)}) from None
        except ShuttingDown as exc:
            raise RequestError(503, str(exc), "server_busy") from None
        return job, relay

    async def collect(job: Job, relay: Relay) -> tuple[list[str], list[str], dict]:
        texts, reasons = [""] * job.n, ["length"] * job.n
        try:
            while True:
                event = await relay.next(job.deadline)
                if event[0] == "text":
                    texts[event[1]] += event[2]
                elif event[0] == "end":
                    reasons[event[1]] = event[2]
                elif event[0] == "error":
                    raise RequestError(event[1], event[2], "server_error")
                elif event[0] == "done":
                    return texts, reasons, _usage(event[1], event[2])
        except ClientGone:
            job.cancelled = True
            raise RequestError(499, "the client closed the request") from None
        except PastDeadline:
            job.cancelled = True
            raise RequestError(504, TIME_LIMIT, "timeout") from None
        finally:
            relay.close()

    def stream(job: Job, relay: Relay, body: Sampling, chunk) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            try:
                for index in range(job.n):
                    first = chunk(index, "", None, True)
                    if first:
                        yield first
                while True:
                    event = await relay.next(job.deadline)
                    if event[0] == "text":
                        yield chunk(event[1], event[2], None, False)
                    elif event[0] == "end":
                        yield chunk(event[1], "", event[2], False)
                    elif event[0] == "error":
                        yield _sse({"error": RequestError(event[1], event[2], "server_error").body()["error"]})
                        return
                    elif event[0] == "done":
                        if body.include_usage:
                            yield chunk(None, "", None, False, _usage(event[1], event[2]))
                        yield "data: [DONE]\n\n"
                        return
            except ClientGone:
                return
            except PastDeadline:
                yield _sse({"error": RequestError(504, TIME_LIMIT, "timeout").body()["error"]})
            finally:
                job.cancelled = job.cancelled or not job.closed
                relay.close()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        job, relay = await start_job(body, body.prompt, lambda: served.encode_completion(body.prompt), request)
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(index, text, finish, opening, usage=None):
            if opening:
                return ""
            choices = [] if index is None else [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]
            return _sse({"id": ident, "object": "text_completion", "created": created, "model": served.name, "choices": choices,
                         **({"usage": usage} if usage else {})})

        if body.stream:
            return stream(job, relay, body, chunk)
        texts, reasons, usage = await collect(job, relay)
        return {"id": ident, "object": "text_completion", "created": created, "model": served.name, "usage": usage,
                "choices": [{"index": i, "text": t, "finish_reason": r, "logprobs": None} for i, (t, r) in enumerate(zip(texts, reasons))]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        from ..tasks.chat import render

        if not getattr(served.tokenizer, "chat_template", None):
            raise RequestError(400, "this model has no chat template; use /v1/completions")
        messages = [m.as_dict() for m in body.messages]
        try:  # off the event loop, as tokenizing is: a long conversation takes a while
            prompt = await run_in_threadpool(render, served.tokenizer, messages, True)
        except UserError as exc:
            raise RequestError(400, f"this model's chat template refused the messages: {exc}") from None
        job, relay = await start_job(body, prompt, lambda: served.encode_chat(messages), request)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(index, text, finish, opening, usage=None):
            if index is None:
                choices = []
            else:
                delta = {"role": "assistant", "content": ""} if opening else ({"content": text} if text else {})
                choices = [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]
            return _sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": served.name,
                         "choices": choices, **({"usage": usage} if usage else {})})

        if body.stream:
            return stream(job, relay, body, chunk)
        texts, reasons, usage = await collect(job, relay)
        return {"id": ident, "object": "chat.completion", "created": created, "model": served.name, "usage": usage,
                "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r, "logprobs": None}
                            for i, (t, r) in enumerate(zip(texts, reasons))]}

    guarded = Guard(app, limits.max_body_bytes, api_key)
    guarded.worker = worker
    return guarded


def _unpaired_surrogate(text: str) -> bool:
    """JSON's \\ud800 escapes decode to a lone surrogate, which no tokenizer (and no UTF-8) can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
