"""The request bodies the server takes, as OpenAI's API names them, and its error answers.

Fields are forbidden unless listed: a request that relies on a field this server does not honour
(`logprobs`, `tools`, `logit_bias`, ...) gets a 400 that names it rather than an answer that ignores it.
The sampling fields take their bounds from `decoding.rules`, shared with `generate` and the web page; only
`temperature` and `repetition_penalty` are narrower here, to OpenAI's and vLLM's ranges.
`user` and `metadata` are informational only and are accepted.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from ..decoding.rules import ALLOWED, OpenAIPenalty, Positive, RepetitionPenalty, Seed, Temperature, TopK, TopP

MAX_STOPS = 4
MAX_MESSAGES = 1000  # past any conversation a served context holds; each one costs the server time before it is refused
SERVED_RANGES = {**ALLOWED, "temperature": "a number from 0 to 2 (0 is greedy)", "repetition_penalty": "a number above 0, at most 2",
                 "max_tokens": "a whole number >= 1", "max_completion_tokens": "a whole number >= 1"}


class RequestError(Exception):
    """An answer other than 200, in OpenAI's error shape; raised before any part of a response is sent."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: Positive | None = None
    temperature: Temperature = Field(1.0, le=2)
    top_p: TopP = 1.0
    top_k: TopK = Field(0, description="not OpenAI's: keep the k likeliest tokens (0: all), as vLLM takes it")
    n: Positive = 1
    stop: str | list[str] | None = None
    seed: Seed | None = None
    frequency_penalty: OpenAIPenalty = 0.0
    presence_penalty: OpenAIPenalty = 0.0
    repetition_penalty: RepetitionPenalty = Field(1.0, le=2, description="not OpenAI's: CTRL's over prompt and text, as vLLM takes it")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        return stops

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def wanted_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def wanted_field(self) -> str:
        """The field the client set the answer's length with, as an error names it."""
        return "max_tokens"


class CompletionRequest(Sampling):
    prompt: str


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_dict(self) -> dict:
        """The message as a chat template takes it: `developer` is OpenAI's newer name for `system`."""
        content = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Positive | None = Field(None, description="OpenAI's newer name for max_tokens")

    @model_validator(mode="after")
    def _one_length(self):
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens differ; send one of them")
        return self

    @property
    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def wanted_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"


def describe_validation(errors: list[dict]) -> str:
    """pydantic's errors as one sentence; an unknown field is named as one this server does not support."""
    problems = []
    for error in errors:
        where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
        if error["type"] == "extra_forbidden":
            problems.append(f"{where}: this server does not support that field; remove it")
        elif error["type"] == "json_invalid":
            problems.append("the body is not valid JSON")
        elif where in SERVED_RANGES:
            problems.append(f"{where}: {error['msg']}; use {SERVED_RANGES[where]}")
        else:
            problems.append(f"{where}: {error['msg']}")
    return "invalid request: " + "; ".join(problems)
