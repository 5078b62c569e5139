"""`tunesmith serve`: an OpenAI-compatible HTTP API (completions, chat with streaming, models, health) on FastAPI.

One model answers one request at a time: requests wait their turn on a lock (FastAPI runs the
handlers in its thread pool), so concurrent clients queue and none is lost. Limits on the body, the
prompt and max_tokens answer with a 4xx and a message, as OpenAI's API does.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
from pydantic import BaseModel, Field

API_KEY_VARIABLE = "TUNESMITH_API_KEY"


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 512
    max_prompt_tokens: int = 2048
    max_body_bytes: int = 1_000_000


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Sampling(BaseModel):
    model: str | None = None
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stream: bool = False


class CompletionRequest(Sampling):
    prompt: str


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Generator:
    """The model, its tokenizer and the lock that makes requests take turns."""

    def __init__(self, model, tokenizer, name: str, limits: Limits, stop_ids: list[int]):
        self.model, self.tokenizer, self.name, self.limits = model, tokenizer, name, limits
        self.stop_ids = stop_ids
        self.lock = threading.Lock()
        self.device = next(model.parameters()).device

    def encode(self, text: str, add_special_tokens: bool) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=add_special_tokens, return_tensors="pt").input_ids
        if ids.shape[1] > self.limits.max_prompt_tokens:
            raise RequestError(400, f"the prompt has {ids.shape[1]} tokens; this server takes at most {self.limits.max_prompt_tokens}")
        return ids.to(self.device)

    def _options(self, request: Sampling, input_ids: torch.Tensor, streamer=None) -> dict:
        from .generation import generate_options

        if request.max_tokens > self.limits.max_tokens:
            raise RequestError(400, f"max_tokens is {request.max_tokens}; this server allows at most {self.limits.max_tokens}")
        return generate_options(self.tokenizer, input_ids, request.max_tokens, request.temperature, None, request.top_p,
                                self.stop_ids, streamer)

    @torch.no_grad()
    def complete(self, request: Sampling, input_ids: torch.Tensor) -> tuple[str, str, int]:
        """The continuation, why it ended ("stop" or "length"), and its token count."""
        options = self._options(request, input_ids)
        with self.lock:
            if request.seed is not None:
                torch.manual_seed(request.seed)
            output = self.model.generate(**options)[0, input_ids.shape[1]:]
        ended = "stop" if len(output) and int(output[-1]) in self.stop_ids else "length"
        return self.tokenizer.decode(output, skip_special_tokens=True), ended, len(output)

    def stream(self, request: Sampling, input_ids: torch.Tensor) -> Iterator[str]:
        """Text pieces as they are generated; the lock is held until the last one."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        options = self._options(request, input_ids, streamer)
        self.lock.acquire()
        try:
            if request.seed is not None:
                torch.manual_seed(request.seed)
            worker = threading.Thread(target=lambda: torch.no_grad()(self.model.generate)(**options), daemon=True)
            worker.start()
            yield from (piece for piece in streamer if piece)
            worker.join()
        finally:
            self.lock.release()


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_chunk(ident: str, created: int, name: str, delta: dict, finish: str | None) -> str:
    body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


def create_app(generator: Generator, api_key: str | None = None):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    from .tasks.chat import render

    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None)

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key and request.headers.get("authorization", "") != f"Bearer {api_key}":
            return error(401, "missing or wrong API key: send Authorization: Bearer <key>", "authentication_error")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > generator.limits.max_body_bytes:
            return error(413, f"the request body is {declared} bytes; this server takes at most {generator.limits.max_body_bytes}")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return error(400, f"invalid request: {problems}")

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        return error(exc.status, exc.message)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": generator.name}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": generator.name, "object": "model", "created": 0, "owned_by": "tunesmith"}]}

    @app.post("/v1/completions")
    def completions(request: CompletionRequest):
        if request.stream:
            raise RequestError(400, "stream is supported on /v1/chat/completions; call /v1/completions without it")
        input_ids = generator.encode(request.prompt, add_special_tokens=True)
        text, ended, count = generator.complete(request, input_ids)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": generator.name,
                "choices": [{"index": 0, "text": text, "finish_reason": ended, "logprobs": None}],
                "usage": _usage(input_ids.shape[1], count)}

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest):
        if not getattr(generator.tokenizer, "chat_template", None):
            raise RequestError(400, "this model has no chat template; use /v1/completions")
        prompt = render(generator.tokenizer, [m.model_dump() for m in request.messages], add_generation_prompt=True)
        input_ids = generator.encode(prompt, add_special_tokens=False)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            def events() -> Iterator[str]:
                yield _chat_chunk(ident, created, generator.name, {"role": "assistant", "content": ""}, None)
                for piece in generator.stream(request, input_ids):
                    yield _chat_chunk(ident, created, generator.name, {"content": piece}, None)
                yield _chat_chunk(ident, created, generator.name, {}, "stop")
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        text, ended, count = generator.complete(request, input_ids)
        return {"id": ident, "object": "chat.completion", "created": created, "model": generator.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text.strip()}, "finish_reason": ended}],
                "usage": _usage(input_ids.shape[1], count)}

    return app


def load_generator_for_serving(spec: str, limits: Limits, device: str = "auto") -> Generator:
    from pathlib import Path

    from .generation import load_generator
    from .tasks.chat import stop_token_ids

    model, tokenizer = load_generator(spec, device)
    return Generator(model, tokenizer, Path(spec).name or spec, limits, stop_token_ids(tokenizer, getattr(model, "name_or_path", None)))
